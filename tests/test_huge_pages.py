"""fpn_plugin.huge_pages: large CPU buffers advised to use transparent huge pages (Linux)."""
import torch

from fpn_plugin.huge_pages import _madvise, empty_with_huge_pages


def _vm_flags(address: int):
    """VmFlags of the mapping of this process that contains ``address`` (from /proc/self/smaps)."""
    flags, inside = None, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "VmFlags:":
                flags = line.split()[1:]
    return flags


def test_large_buffer_is_advised_and_an_ordinary_tensor():
    like = torch.zeros(2, dtype=torch.float32)
    buf = empty_with_huge_pages(like, (64, 1 << 17))  # 32 MiB
    assert buf.shape == (64, 1 << 17) and buf.dtype == torch.float32 and buf.is_contiguous()
    buf.fill_(3.0)
    assert float(buf.sum()) == 3.0 * buf.numel()
    if _madvise() is not None:  # this project's machines: transparent_hugepage = madvise
        middle = buf.data_ptr() + buf.numel() * buf.element_size() // 2
        assert "hg" in _vm_flags(middle)  # the kernel recorded MADV_HUGEPAGE for the buffer
    small = empty_with_huge_pages(like, (16,))  # too small to be advised; still a plain tensor
    assert small.shape == (16,)
