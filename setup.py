"""Builds ganplug._C from csrc/: the C++ kernels always, the CUDA kernels whenever a CUDA toolkit
is found and torch is a CUDA build (a visible GPU is not needed).

Environment:
  CUDA_HOME              the toolkit root (default: /usr/local/cuda, else found from nvcc)
  TORCH_CUDA_ARCH_LIST   GPU architectures to compile for (default "8.0;8.6;8.9;9.0")
  GANPLUG_BUILD_CUDA=0   build the CPU kernels only
  GANPLUG_CPU_AVX2=0|1   compile the CPU kernels for AVX2+FMA (default: when this machine's CPU has them)
"""

import glob
import importlib.util
import os
import platform
import sys

from setuptools import setup

DEFAULT_ARCHS = "8.0;8.6;8.9;9.0"


def _load_toolkit():
    """ganplug/_toolkit.py by path (importing the package would need its dependencies)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ganplug", "_toolkit.py")
    spec = importlib.util.spec_from_file_location("ganplug_toolkit", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


toolkit = _load_toolkit()


def cpu_has_avx2():
    """True on an x86-64 Linux machine whose CPU has AVX2, FMA and F16C (every x86 CPU since 2015)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return {"avx2", "fma", "f16c"} <= set(flags)


def cpu_vector_flags():
    """Flags that make at::vec::Vectorized (the CPU kernels' SIMD type) use AVX2: 8 float lanes and
    Sleef's vectorised exp/log1p, instead of the portable fallback's scalar loops. The module then
    needs an AVX2 CPU to run, so GANPLUG_CPU_AVX2=0 builds portable code for other machines."""
    setting = os.environ.get("GANPLUG_CPU_AVX2")
    if setting == "0" or (setting is None and not cpu_has_avx2()):
        return []
    return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2"]


cuda_home = None if os.environ.get("GANPLUG_BUILD_CUDA") == "0" else toolkit.find_cuda_home()
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home  # read when torch.utils.cpp_extension is imported
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

with_cuda = cuda_home is not None and torch.version.cuda is not None
sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
cxx_flags = ["-O3", "-fopenmp", *cpu_vector_flags()]  # torch picks the C++ standard it needs
if with_cuda:
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    extension = CUDAExtension(
        "ganplug._C",
        sources,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
        extra_link_args=["-fopenmp"],
    )
else:
    extension = CppExtension("ganplug._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"])

print(
    f"ganplug: building ganplug._C with {'CPU and CUDA' if with_cuda else 'CPU'} kernels"
    + (" (CPU kernels for AVX2)" if cpu_vector_flags() else "")
    + (f" (CUDA_HOME={cuda_home}, archs {os.environ['TORCH_CUDA_ARCH_LIST']})" if with_cuda else ""),
    file=sys.stderr,
)
ninja = toolkit.find_ninja()
if ninja is None:
    print(f"ganplug: {toolkit.NO_NINJA}", file=sys.stderr)
elif os.path.dirname(ninja) not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = os.pathsep.join(
        [os.path.dirname(ninja), os.environ.get("PATH", "")]
    )  # torch runs `ninja` by name

setup(ext_modules=[extension], cmdclass={"build_ext": BuildExtension})
