"""rlfl.envs: Gymnasium environments for text generation (installed as ``rlfl.envs``).

The text-generation environments, reward sources and the env registry live here (see DESIGN.md);
this package is the installed home for them and is imported as ``rlfl.envs``, never as ``envs``.
"""
