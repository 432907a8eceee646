"""Device attention kernels (Triton, optional FlashInfer) over the paged pool layout.

Nothing here is imported by the CPU path: `neo_async.runner.attention` imports these modules
only when a pool lives on a CUDA device, so CPU-only installs never need Triton. The same
kernels run on CPU tensors in Triton's interpreter, which is how the tests check them.
"""
