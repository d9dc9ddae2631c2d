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




class Mixed(nyto.NytoModule):
    """Every kind of parameter: a NytoModule submodule, float32/float64/float16, frozen,
    non-operational shared and copied, integer."""

    def __init__(self):
        super().__init__()
        self.inner = Net()
        self.scale = nn.Parameter(torch.rand(3) + 0.5)
        self.wide = nn.Parameter(torch.rand(5, dtype=torch.float64) + 0.5)
        self.low = nn.Parameter(torch.rand(3).half() + 0.5)
        self.frozen = nn.Parameter(torch.rand(2) + 0.5, requires_grad=False)
        self.shared = nn.Parameter(torch.rand(2) + 0.5)
        self.copied = nn.Parameter(torch.rand(2) + 0.5)
        self.steps = nn.Parameter(torch.arange(3), requires_grad=False)
        self.set_param_config(operational=False, clone=False, name="shared")
        self.set_param_config(operational=False, clone=True, name="copied")
        self.set_param_config(operational=False, clone=False, name="steps")
