"""Actor-critic networks: one trunk shared by a policy head and a value head (Section 6.1, 6.3).

The paper's A2C network (Mnih et al. 2015/2016): the Nature CNN trunk -- conv 32x8x8/4, conv 64x4x4/2,
conv 64x3x3/1, fully connected 512, ReLU -- whose convolutions and first fully connected layer are shared by the
policy logits and the value ``V(s)``. Section 6.3 reads the same two heads as a dueling Q-network,
``Q(s, a) = V(s) + tau log pi(a|s)`` (:func:`softq.regularized.q_from_value_and_policy`), so all three update
rules train the very same network. Classic control uses an MLP trunk (two tanh layers of ``hidden`` units).

Initialization follows OpenAI baselines (orthogonal: gain sqrt(2) in the trunk, 1 for the value, zero biases;
the policy head's gain is ``policy_init_scale``: 1.0 in baselines' 2017 A2C, the paper's, 0.01 from 2018 on).

DQN (Section 6.2) uses the same trunks under one linear head of action values, :class:`QNetwork` (the Nature DQN
network: the CNN trunk and a 512 -> A layer).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ActorCritic", "QNetwork", "nature_cnn", "mlp_trunk", "make_net", "make_q_net"]


def _init(layer: nn.Module, gain: float) -> nn.Module:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def nature_cnn(in_channels: int = 4, features: int = 512) -> nn.Sequential:
    """The Nature-DQN trunk: ``uint8 [N, C, 84, 84]`` scaled to [0, 1] -> ``[N, features]``."""
    g = math.sqrt(2)
    return nn.Sequential(
        _init(nn.Conv2d(in_channels, 32, 8, stride=4), g), nn.ReLU(),
        _init(nn.Conv2d(32, 64, 4, stride=2), g), nn.ReLU(),
        _init(nn.Conv2d(64, 64, 3, stride=1), g), nn.ReLU(),
        nn.Flatten(),
        _init(nn.Linear(64 * 7 * 7, features), g), nn.ReLU(),
    )


def mlp_trunk(obs_dim: int, hidden: int = 64) -> nn.Sequential:
    """Two tanh layers: ``float [N, obs_dim]`` -> ``[N, hidden]``."""
    g = math.sqrt(2)
    return nn.Sequential(
        _init(nn.Linear(obs_dim, hidden), g), nn.Tanh(), _init(nn.Linear(hidden, hidden), g), nn.Tanh()
    )


class ActorCritic(nn.Module):
    """``forward(obs) -> (log_pi [N, A], v [N])``: the policy's log-probabilities and the value, one shared trunk.

    ``log_pi`` is ``log_softmax`` of the policy head's logits (a categorical policy); ``obs: [N, *obs_shape]``.
    Images (uint8) are divided by 255 inside the network, so rollouts store bytes.
    """

    def __init__(self, trunk: nn.Module, features: int, n_actions: int, image: bool,
                 policy_init_scale: float = 1.0):
        super().__init__()
        self.trunk = trunk
        self.image = image
        self.policy = _init(nn.Linear(features, n_actions), policy_init_scale)
        self.value = _init(nn.Linear(features, 1), 1.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = obs.float() / 255.0 if self.image else obs.float()
        h = self.trunk(x)
        # the heads' outputs in float32: under bf16 autocast (CPU) log_softmax would otherwise run in bf16, and
        # its probabilities sum to 1 only within about 1e-2
        return torch.log_softmax(self.policy(h).float(), dim=-1), self.value(h)[..., 0].float()


def make_net(obs_shape: tuple[int, ...], n_actions: int, hidden: int = 64,
             policy_init_scale: float = 1.0) -> ActorCritic:
    """The Nature CNN actor-critic for image stacks ``[C, 84, 84]``, the MLP one for flat ``[d]`` observations.

    ``policy_init_scale``: the orthogonal gain of the policy head (1.0: baselines' 2017 A2C ``CnnPolicy``; its
    later versions use 0.01, a nearly uniform initial policy). Always float32 (what ``forward`` feeds it), whatever
    ``torch.get_default_dtype()`` a caller has set.
    """
    if len(obs_shape) == 3:
        return ActorCritic(nature_cnn(obs_shape[0]), 512, n_actions, True, policy_init_scale).float()
    if len(obs_shape) == 1:
        return ActorCritic(mlp_trunk(obs_shape[0], hidden), hidden, n_actions, False, policy_init_scale).float()
    raise ValueError(f"obs_shape must be [C, H, W] (images) or [d] (vectors), got {obs_shape}")


class QNetwork(nn.Module):
    """``forward(obs) -> q [N, A]``: action values for DQN (Section 6.2), a trunk and one linear head.

    ``obs: [N, *obs_shape]``; images (uint8) are divided by 255 inside the network, so the replay stores bytes.
    """

    def __init__(self, trunk: nn.Module, features: int, n_actions: int, image: bool):
        super().__init__()
        self.trunk = trunk
        self.image = image
        self.head = _init(nn.Linear(features, n_actions), 1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float() / 255.0 if self.image else obs.float()
        return self.head(self.trunk(x))


def make_q_net(obs_shape: tuple[int, ...], n_actions: int, hidden: int = 64) -> QNetwork:
    """The Nature DQN network for image stacks ``[C, 84, 84]``, an MLP one for flat ``[d]`` observations (float32)."""
    if len(obs_shape) == 3:
        return QNetwork(nature_cnn(obs_shape[0]), 512, n_actions, image=True).float()
    if len(obs_shape) == 1:
        return QNetwork(mlp_trunk(obs_shape[0], hidden), hidden, n_actions, image=False).float()
    raise ValueError(f"obs_shape must be [C, H, W] (images) or [d] (vectors), got {obs_shape}")
