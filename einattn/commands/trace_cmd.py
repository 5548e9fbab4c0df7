"""einattn trace MODULE:FUNCTION --shape q=2x8x128x64,...: the spec a plain PyTorch function derives."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

from einattn.ir import SpecError


def add(sub):
    p = sub.add_parser("trace", help="print the spec derived from an attention function written in PyTorch")
    p.add_argument("function", help="module:function or path/to/file.py:function (decorated or plain)")
    p.add_argument("--shape", action="append", default=[], required=True,
                   help="shapes of the tensor arguments, e.g. q=2x8x128x64,k=2x2x256x64,v=2x2x256x64 "
                        "(repeatable); every tensor argument needs one")
    p.add_argument("--arg", action="append", default=[],
                   help="a non-tensor argument, e.g. window=64 (Python literal); defaults apply otherwise")
    p.add_argument("--dtype", default="float32", help="dtype of the example tensors (default float32)")
    p.set_defaults(run=run)


def run(args) -> int:
    import torch

    from einattn.trace import trace
    fn = load_function(args.function)
    fn = getattr(fn, "fn", fn)                       # an @einattn.attention function: its source
    if not callable(fn):
        raise SpecError(f"{args.function} is a {type(fn).__name__}, not a function",
                        expected="module:function naming an attention function")
    shapes = {}
    for item in args.shape:
        for part in filter(None, (s.strip() for s in item.split(","))):
            name, _, dims = part.partition("=")
            try:
                shapes[name.strip()] = [int(x) for x in dims.lower().split("x")]
                if min(shapes[name.strip()]) < 1:
                    raise ValueError
            except ValueError:
                raise SpecError(f"bad --shape item {part!r}", expected="name=AxBxC with sizes >= 1, such as q=2x8x128x64",
                                found=part) from None
    kwargs = {}
    for item in args.arg:
        name, _, value = item.partition("=")
        try:
            kwargs[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise SpecError(f"bad --arg {item!r}", expected="name=<Python literal>, e.g. window=64",
                            found=item) from None
    dtype = getattr(torch, args.dtype, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise SpecError(f"unknown dtype {args.dtype!r}", expected="float32, float64, float16 or bfloat16")
    params = [p for p in inspect.signature(fn).parameters.values() if p.name not in kwargs]
    missing = [p.name for p in params if p.name not in shapes and p.default is inspect.Parameter.empty]
    if missing:
        raise SpecError(f"no shape for argument(s) {', '.join(missing)} of {fn.__qualname__}",
                        expected="--shape " + ",".join(f"{n}=AxBxC" for n in missing))
    unknown = set(shapes) - {p.name for p in params}
    if unknown:
        raise SpecError(f"--shape names no argument of {fn.__qualname__}: {', '.join(sorted(unknown))}",
                        expected=", ".join(p.name for p in params))
    gen = torch.Generator().manual_seed(0)
    for name, dims in shapes.items():
        kwargs[name] = torch.randn(dims, generator=gen).to(dtype)
    tr = trace(fn, (), kwargs)
    print(tr.text, end="")
    import einattn
    plan = einattn.explain(tr.spec)
    print(f"# {plan.naive_passes} pass(es) over '{tr.spec.key}' as written, {plan.passes} planned "
          f"({', '.join(plan.rewrites) or 'no rewrites'})")
    return 0


def load_function(ref: str):
    """``module:function`` or ``path/file.py:function`` -> the object."""
    mod_name, sep, attr = ref.rpartition(":")
    if not sep or not mod_name or not attr:
        raise SpecError(f"bad function reference {ref!r}", expected="module:function or file.py:function")
    if mod_name.endswith(".py") or "/" in mod_name:
        path = Path(mod_name)
        if not path.is_file():
            raise SpecError(f"no such file {mod_name!r}", expected="an existing .py file")
        sys.path.insert(0, str(path.resolve().parent))     # as `python file.py` would: its siblings import
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault(path.stem, module)
        try:
            spec.loader.exec_module(module)
        except Exception as e:      # noqa: BLE001 -- the user's module failed, not einattn
            raise SpecError(f"cannot import {mod_name}", found=f"{type(e).__name__}: {e}") from None
    else:
        sys.path.insert(0, ".")
        try:
            module = importlib.import_module(mod_name)
        except Exception as e:      # noqa: BLE001 -- the user's module failed, not einattn
            raise SpecError(f"cannot import module {mod_name!r}", found=f"{type(e).__name__}: {e}") from None
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise SpecError(f"{mod_name} has no {attr!r}", expected="a function defined in that module")
    return obj
