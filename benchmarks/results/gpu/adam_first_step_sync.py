"""Where a capturable Adam's first step synchronises with the host (CUDA sync debug mode)."""

import traceback

import torch

p = torch.nn.Parameter(torch.randn(8, device="cuda"))
adam = torch.optim.Adam([p], lr=1e-3, capturable=True)
for step in (1, 2):
    p.grad = torch.randn(8, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        adam.step()
        print(f"step {step}: no synchronisation")
    except RuntimeError:
        print(f"step {step}: synchronises at")
        traceback.print_exc(limit=-6)
    finally:
        torch.cuda.set_sync_debug_mode("default")
