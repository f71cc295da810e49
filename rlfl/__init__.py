"""rlfl: reinforcement learning from feedback on language models.

The whole lifecycle in one small package: tokenize and pretrain a GPT, fine-tune it, frame generation
as Gymnasium environments, and train it with PPO against human- or AI-derived rewards.

Example:
    >>> import rlfl
    >>> rlfl.__version__
    '0.1.0'
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
