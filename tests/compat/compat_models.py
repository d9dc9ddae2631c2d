import torch
from torch import nn

import nytorch as nyto


class Net(nyto.NytoModule):
    """The reference's running example: a Linear and a free parameter."""

    def __init__(self):
        super().__init__()
        self.my_module = nn.Linear(3, 2)
        self.my_param = nn.Parameter(torch.randn(2, 2))


class Vec(nyto.NytoModule):
    def __init__(self, values=(0.0, 1.0, 2.0)):
        super().__init__()
        self.my_param = nn.Parameter(torch.tensor(values))


