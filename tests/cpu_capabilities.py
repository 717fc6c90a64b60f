"""Print the CPU capabilities below this machine's native one that torch's kernels can be made to use
(ATEN_CPU_CAPABILITY), one per line: `make test` runs the tests that compare numbers computed here with
numbers stored from another machine (marker stored_numbers) under each of them too, so a test that holds
only where the kernels round like the machine that wrote the fixtures fails here as well.
"""
import torch

# torch's dispatch levels, lowest first; other architectures have only their one vector level above default.
X86 = ("default", "avx2", "avx512")


def lower_capabilities(native: str) -> list[str]:
    native = native.lower()
    if native in X86:
        return list(X86[:X86.index(native)])
    return [] if native in ("default", "no avx") else ["default"]


if __name__ == "__main__":
    print("\n".join(lower_capabilities(torch.backends.cpu.get_cpu_capability())))
