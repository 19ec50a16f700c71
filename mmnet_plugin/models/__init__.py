"""MM-Net's parts: the Conv-4 backbone, the memory module, the contextual learner, the
factorized query block, and the assembled :class:`MMNet`."""

from .backbone import Conv4, conv_block, embedding_dim
from .contextual import ContextualLearner
from .factorized import FactorizedConvBlock
from .memory import MemoryState, read_memory, write_memory
from .mmnet import MMNet, MMNetOutput

__all__ = [
    "MMNet",
    "MMNetOutput",
    "Conv4",
    "conv_block",
    "embedding_dim",
    "ContextualLearner",
    "FactorizedConvBlock",
    "MemoryState",
    "read_memory",
    "write_memory",
]
