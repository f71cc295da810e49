"""rlfl.agents: PPO agents and transformer policies on stable-baselines3 (installed as ``rlfl.agents``).

The SB3-based ``TransformerPolicy`` and the batched KV-cache ``PPO`` live here (see DESIGN.md); this
package is imported as ``rlfl.agents``, never as ``agents``.
"""
