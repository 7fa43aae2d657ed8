"""A tiny random-weight Shap-E text-to-3D pipeline saved in diffusers' on-disk layout, so that tests load
it through the same `from_pretrained` code as the real "openai/shap-e" (no network).

    folder = save_tiny_shap_e(tmp_path / "shap-e")   # model_index.json, prior/, text_encoder/,
                                                     # tokenizer/, scheduler/, shap_e_renderer/

Sizes follow diffusers' own Shap-E tests: a one-layer prior transformer over 32 latent rows of width 32,
a CLIP text encoder of width 32 with a 32-token context, and a NeRSTF renderer MLP 8 wide (its first four
layers' weights come from the latent: 4 x 8 = 32 rows), with the marching-cubes tables the real checkpoint
carries. With random weights the decoded signed distance is a smooth random field that crosses zero.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from tiny_models import TOKEN_CONTEXT, write_clip_tokenizer

WIDTH = 32  # latent width = text embedding width
RENDER_WIDTH = 8  # the renderer MLP's hidden width


def marching_cubes_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """The tables Shap-E's MeshDecoder reads (cases [256, 5, 3] edge ids, masks [256, 5]): the real
    checkpoint carries them as buffers, a new MeshDecoder holds zeros (no triangles at all). Built by
    scikit-image's classic marching cubes on each of the 256 corner signs of one cube.

    Shap-E's numbering: corner (i, j, k) is bit i + 2 j + 4 k; edges 0-3 run along x at (y, z) = (0, 0),
    (1, 0), (0, 1), (1, 1), edges 4-7 along y at (x, z) in that order, edges 8-11 along z at (x, y)."""
    from skimage.measure import marching_cubes

    mids = {}
    for e, (a, b) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        mids[(0.5, float(a), float(b))] = e
        mids[(float(a), 0.5, float(b))] = 4 + e
        mids[(float(a), float(b), 0.5)] = 8 + e
    cases = torch.zeros(256, 5, 3, dtype=torch.long)
    masks = torch.zeros(256, 5, dtype=torch.bool)
    for case in range(1, 255):
        corners = np.array([[[1.0 if case >> (i + 2 * j + 4 * k) & 1 else -1.0 for k in (0, 1)] for j in (0, 1)]
                            for i in (0, 1)])
        verts, faces, _, _ = marching_cubes(corners, 0.0, method="lorensen")
        edge = [mids[tuple(float(c) for c in v)] for v in verts]
        for t, face in enumerate(faces):
            cases[case, t] = torch.tensor([edge[i] for i in face])
            masks[case, t] = True
    return cases, masks


def save_tiny_shap_e(folder: Path, seed: int = 0) -> Path:
    """A random tiny ShapEPipeline folder; returns `folder`."""
    from diffusers import HeunDiscreteScheduler, PriorTransformer, ShapEPipeline
    from diffusers.pipelines.shap_e import ShapERenderer
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    prior = PriorTransformer(
        num_attention_heads=2, attention_head_dim=16, embedding_dim=WIDTH, num_embeddings=4 * RENDER_WIDTH,
        embedding_proj_dim=WIDTH, time_embed_dim=4 * WIDTH, num_layers=1, clip_embed_dim=2 * WIDTH,
        additional_embeddings=0, time_embed_act_fn="gelu", norm_in_type="layer", encoder_hid_proj_type=None,
        added_emb_type=None,
    )
    vocab_size = write_clip_tokenizer(folder / "_tokenizer")
    text = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=WIDTH, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=TOKEN_CONTEXT, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1, projection_dim=WIDTH,
    ))
    renderer = ShapERenderer(
        param_shapes=((RENDER_WIDTH, 93), (RENDER_WIDTH, RENDER_WIDTH), (RENDER_WIDTH, RENDER_WIDTH),
                      (RENDER_WIDTH, RENDER_WIDTH)),
        d_latent=WIDTH, d_hidden=RENDER_WIDTH, n_output=12, background=(0.1, 0.1, 0.1),
    )
    cases, masks = marching_cubes_tables()
    renderer.mesh_decoder.cases.copy_(cases)
    renderer.mesh_decoder.masks.copy_(masks)
    scheduler = HeunDiscreteScheduler(beta_schedule="exp", num_train_timesteps=1024, prediction_type="sample",
                                      use_karras_sigmas=True, clip_sample=True, clip_sample_range=1.0)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "_tokenizer")
    ShapEPipeline(prior=prior, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler,
                  shap_e_renderer=renderer).save_pretrained(folder)
    shutil.rmtree(folder / "_tokenizer")  # save_pretrained wrote it again as tokenizer/
    return folder
