"""How the ops run, apart from what they compute:

    dispatch.py       registering an op (schema, fake, autograd), the selection rule (Triton or
                      the reference), the eager fast path that skips torch.library's dispatch
    fastlaunch.py     launching a compiled kernel through Triton's launcher directly
    launch_params.py  block sizes and warps of the memory-bound kernels (one table, a reason per row)
    checks.py         argument checks every launcher makes (no Triton import)
    layout.py         memory formats and grid arithmetic (no Triton import)
    verify.py         correctness on first contact: the conv candidates' and every op's check
                      against the reference, the plan cache (no Triton import at module level)
"""
