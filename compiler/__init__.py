"""einattn.compiler: pass analysis, rewrites and the pass plan. Imports only einattn.ir."""
from .passes import Placement, Role, count_passes, pass_chain, place
from .normalize import gather_scalars, pull_value_reads, split_score_sum, split_value_sum
from .rewrites import PIPELINE, defer_normalization, online_rescaling, prune_unused
from .plan import PassPlan, Plan, Step, check_streamable, make_plan, rewrite, schedule
from .kernel_plan import (Kind, KernelPass, KernelPlan, MapOp, RowOp, RowReduceOp, RunningOp, ScoreOp, TileOp,
                          ValueOp, make_kernel_plan)
from .capabilities import Capabilities, check_capabilities
from .lowering import alias_copies, fuse_row_reductions, hoist_key_free_reads, stage_dense_reads

__all__ = ["Placement", "Role", "count_passes", "pass_chain", "place", "gather_scalars", "pull_value_reads",
           "split_score_sum", "split_value_sum", "PIPELINE", "defer_normalization",
           "online_rescaling", "prune_unused", "PassPlan", "Plan", "check_streamable", "Step", "make_plan", "rewrite", "schedule",
           "Kind", "KernelPass", "KernelPlan", "TileOp", "ScoreOp", "MapOp", "RowReduceOp", "ValueOp", "RunningOp",
           "RowOp", "make_kernel_plan", "Capabilities", "check_capabilities", "alias_copies", "fuse_row_reductions",
           "hoist_key_free_reads", "stage_dense_reads"]
