"""Gaussian Dreamer Studio: the application (scene, session, export, config, front-ends).

Submodules are imported where used (`from studio.scene import GaussianScene`); importing `studio` itself
stays light.
"""
