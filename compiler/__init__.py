"""einattn.compiler: pass analysis, rewrites and the pass plan. Imports only einattn.ir."""
from .passes import Placement, Role, count_passes, pass_chain, place
from .rewrites import PIPELINE, defer_normalization, online_rescaling, prune_unused
from .plan import PassPlan, Plan, Step, check_streamable, make_plan, rewrite, schedule
from .kernel_plan import Kind, KernelPass, KernelPlan, TileOp, make_kernel_plan

__all__ = ["Placement", "Role", "count_passes", "pass_chain", "place", "PIPELINE", "defer_normalization",
           "online_rescaling", "prune_unused", "PassPlan", "Plan", "check_streamable", "Step", "make_plan", "rewrite", "schedule",
           "Kind", "KernelPass", "KernelPlan", "TileOp", "make_kernel_plan"]
