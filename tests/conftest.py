import torch

# Tests run two pytest workers on a 2-core machine: one thread each avoids oversubscription.
torch.set_num_threads(1)
