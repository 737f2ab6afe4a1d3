import os
import sys

import torch

# Tests run two pytest workers on a 2-core machine: one thread each avoids oversubscription.
torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))        # test modules import helpers from each other (test_exact_models)
