"""Build of ``commlib`` and its optional native extension ``commlib._C``.

Metadata lives in ``pyproject.toml``; this file only describes the extension.
Build against the torch that is already installed (an isolated build would
fetch another torch)::

    pip install --no-build-isolation -e .

Steps:

1. Collect ``csrc/*.cpp`` (op schemas, the Python module) and
   ``csrc/cpu/*.cpp`` (CPU kernels).
2. Add ``csrc/cuda/*.cu`` and build a ``CUDAExtension`` (macro ``WITH_CUDA``)
   when CUDA is wanted -- ``torch.cuda.is_available()`` or ``FORCE_CUDA=1`` --
   *and* torch found a CUDA toolkit (``CUDA_HOME``); otherwise build a
   CPU-only ``CppExtension``.
3. Optimise (``-O3``) unless ``DEBUG=1`` (``-O0 -g``); add ``-fopenmp`` when
   torch parallelises with OpenMP and the compiler accepts the flag, so that
   ``at::parallel_for`` in our kernels really runs on several threads; add
   ``-march=native`` (the kernels' loops vectorise for the building CPU) unless
   ``COMMLIB_PORTABLE=1``, which builds for the compiler's default target.
   ``ASAN=1`` builds with AddressSanitizer (``make asan``). Always
   ``-ffp-contract=off``: no fused multiply-adds, so the kernels' float
   arithmetic rounds exactly like the pure-torch reference's; and
   ``-fno-trapping-math`` (results unchanged; the compiler may ignore FP
   exception flags), without which GCC will not vectorize float-to-int loops.

The C++ sources are C++17. No ``-std`` flag is passed: torch's
``BuildExtension`` adds the standard its own headers need (C++17 for
torch 2.4, C++20 for recent releases, whose headers warn under C++17).

Environment: ``DEBUG=1``, ``FORCE_CUDA=1``, ``CUDA_HOME``, ``CXX``,
``MAX_JOBS`` (torch's), ``COMMLIB_NO_OPENMP=1`` (build without OpenMP),
``COMMLIB_PORTABLE=1``, ``ASAN=1``.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
EXTENSION = "commlib._C"

_OPENMP_PROBE = "#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "") == "1"


def _log(message: str) -> None:
    print(f"commlib setup: {message}", file=sys.stderr)


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def _compiles(flags: list[str], source: str) -> bool:
    """Whether the C++ compiler builds and links ``source`` with ``flags``."""
    compiler = _compiler()
    if compiler is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.cpp")
        with open(path, "w") as f:
            f.write(source)
        probe = subprocess.run(
            [compiler, *flags, path, "-o", os.path.join(tmp, "probe")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    return probe.returncode == 0


def _accepts_flag(flag: str) -> bool:
    return _compiles([flag], "int main() { return 0; }\n")


def _openmp_flags(torch) -> list[str]:
    """``["-fopenmp"]`` when torch uses OpenMP and the C++ compiler can compile and link with it, else ``[]``."""
    if _env_flag("COMMLIB_NO_OPENMP") or sys.platform == "win32":
        return []
    if not torch.backends.openmp.is_available():
        return []
    if not _compiles(["-fopenmp"], _OPENMP_PROBE):
        _log(f"{_compiler()} does not accept -fopenmp; the kernels will run single-threaded")
        return []
    return ["-fopenmp"]


def _extensions() -> tuple[list, dict]:
    """The ``ext_modules`` and ``cmdclass`` for ``setup()``: one extension, CUDA or CPU-only."""
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        _log("torch is not importable: building without commlib._C (the pure-torch reference is used)")
        return [], {}

    debug = _env_flag("DEBUG")
    sources = sorted(glob.glob("csrc/*.cpp", root_dir=HERE)) + sorted(glob.glob("csrc/cpu/*.cpp", root_dir=HERE))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu", root_dir=HERE))
    want_cuda = torch.cuda.is_available() or _env_flag("FORCE_CUDA")
    use_cuda = want_cuda and CUDA_HOME is not None and bool(cuda_sources)
    if want_cuda and not use_cuda:
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "torch found no CUDA_HOME"
        _log(f"CUDA was requested but {why}; building the CPU kernels only")

    openmp = _openmp_flags(torch)
    optimise = ["-O0", "-g"] if debug else ["-O3"]
    native = [] if _env_flag("COMMLIB_PORTABLE") or not _accepts_flag("-march=native") else ["-march=native"]
    asan = ["-fsanitize=address", "-fno-omit-frame-pointer"] if _env_flag("ASAN") else []
    extra_compile_args = {"cxx": optimise + ["-ffp-contract=off", "-fno-trapping-math"] + openmp + native + asan}
    extra_link_args = openmp + asan + (["-O0", "-g"] if debug else [])
    define_macros: list[tuple[str, str | None]] = []
    if use_cuda:
        extra_compile_args["nvcc"] = ["-O0", "-g", "-lineinfo"] if debug else ["-O3"]
        define_macros.append(("WITH_CUDA", None))
        factory = CUDAExtension
        sources = sources + cuda_sources
    else:
        factory = CppExtension

    _log(
        f"building {EXTENSION} with {'CUDA' if use_cuda else 'CPU'} kernels"
        f"{' (DEBUG)' if debug else ''}{' +OpenMP' if openmp else ''}{' -march=native' if native else ''}"
        f"{' +ASan' if asan else ''} against torch {torch.__version__}"
    )
    extension = factory(
        EXTENSION,
        sources,
        extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args,
        define_macros=define_macros,
    )
    return [extension], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["commlib", "commlib.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
