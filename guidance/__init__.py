"""Images in, gradients out: the 2D diffusion priors (`guidance.priors`) and the gradient estimators
that distil them into a 3D scene (`guidance.estimators`: SDS, ISM, SSD). No scene, no UI.

    prior = guidance.priors.make_prior("procedural")      # or a Stable Diffusion hub id / folder
    cond = prior.embed("a cube")
"""
