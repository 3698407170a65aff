from __future__ import annotations

import platform
import sys

from emolens.allocator import retain_freed_memory


def test_retain_freed_memory_takes_effect_exactly_on_glibc() -> None:
    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert retain_freed_memory() is on_glibc
