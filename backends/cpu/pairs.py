"""bf16 dot products on ``vdpbf16ps`` (AVX512_BF16): the pair-interleaved operands and the call.

``vdpbf16ps`` adds, in each of 16 fp32 lanes, the products of one pair of bf16 values:
``acc[i] += a[2i] * b[2i] + a[2i+1] * b[2i+1]``, at twice the rate of fp32 FMA. A contraction
therefore takes two consecutive values of its summed index in one 32-bit slot of each operand
(low half the even one):

- the score ``S = Q K^T`` (summed over the contraction index f): the query-side operand
  ``a_S[f, i]`` (the template's, without the scalars: bf16 exactly) is packed once per task to
  ``a2_S[f / 2, i]``; a key row's pair ``K[n, 2f'], K[n, 2f' + 1]`` is adjacent in memory: one
  32-bit load broadcast to the 16 lanes. The products are exact in fp32; the score's scalars
  (the softmax scale) multiply the accumulated tile. f must be even.
- the value product ``O += P V`` (summed over the keys n): per key tile, V's rows ``2n', 2n'+1``
  are interleaved to ``v2[n', e]`` (the bits as given), and P is rounded to bf16 (as
  FlashAttention does on GPUs) and packed to ``p2[n', i]``, one pair broadcast per row; an odd
  key count pairs the last key with a zero. The value width of each register tile must be a
  multiple of 16.

Everything else (the softmax, score mods, the running state, the accumulators) stays fp32.
TVM 0.27 turns every bfloat16 value into fp32 arithmetic before code generation
(``BF16ComputeLegalize``), which would change the intrinsic's operand types, so the kernel calls
``einattn_dpbf16`` on int32 vectors: the few lines of LLVM IR below, linked into the kernel's
module (the ``pragma_import_llvm`` attribute) and always inlined, reinterpret them as the
intrinsic's ``<32 x bfloat>`` operands.
"""
from __future__ import annotations

from .expr import store_text

LANES = 16                   # fp32 lanes of one vdpbf16ps (zmm)
NAME = "einattn_dpbf16"
PACK = "einattn_pack_bf16"
_ZIP = ", ".join(f"i32 {i}, i32 {i + 16}" for i in range(16))     # lo[0], hi[0], lo[1], hi[1], ...
IR = (f"define <16 x float> @{NAME}(<16 x float> %acc, <16 x i32> %a, <16 x i32> %b) #0 {{\n"
      "  %x = bitcast <16 x i32> %a to <32 x bfloat>\n"
      "  %y = bitcast <16 x i32> %b to <32 x bfloat>\n"
      "  %r = call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float> %acc, <32 x bfloat> %x, "
      "<32 x bfloat> %y)\n"
      "  ret <16 x float> %r\n"
      "}\n"
      # two fp32 vectors rounded to bf16 (vcvtneps2bf16: nearest even, NaN kept) and interleaved
      f"define <16 x i32> @{PACK}(<16 x float> %lo, <16 x float> %hi) #0 {{\n"
      "  %a = fptrunc <16 x float> %lo to <16 x bfloat>\n"
      "  %b = fptrunc <16 x float> %hi to <16 x bfloat>\n"
      f"  %z = shufflevector <16 x bfloat> %a, <16 x bfloat> %b, <32 x i32> <{_ZIP}>\n"
      "  %r = bitcast <32 x bfloat> %z to <16 x i32>\n"
      "  ret <16 x i32> %r\n"
      "}\n"
      "declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)\n"
      "attributes #0 = { alwaysinline nounwind }\n")


def usable(has_bf16: bool, vec: int) -> bool:
    """Whether the host runs ``vdpbf16ps`` on 512-bit registers (the kernel's vector width)."""
    return has_bf16 and vec == LANES


def pack(lo: str, hi: str) -> str:
    """TIR text of the int32 slot holding two uint16 bf16 bit patterns (``lo`` in the low half)."""
    return f'T.bitwise_or(T.Cast("int32", {lo}), T.shift_left(T.Cast("int32", {hi}), 16))'


def pack_rounded(lo: str, hi: str) -> str:
    """The slot of two fp32 buffer elements rounded to bf16 (nearest even)."""
    return pack(store_text("bfloat16", lo), store_text("bfloat16", hi))


def pack_vector(lo: str, hi: str) -> str:
    """TIR text of 16 int32 slots of two float32x16 values rounded to bf16 and interleaved."""
    return f'T.call_pure_extern("int32x{LANES}", "{PACK}", {lo}, {hi})'


def pair_load(ref: str) -> str:
    """The int32 of two adjacent uint16 elements (``ref`` indexes them with a 2-lane ramp)."""
    return f'T.reinterpret("int32", {ref})'


def dot(acc: str, a: str, b: str) -> str:
    """``acc`` (16 fp32) plus the pair products of the int32x16 slots ``a`` and ``b``."""
    return f'T.call_pure_extern("float32x{LANES}", "{NAME}", {acc}, {a}, {b})'
