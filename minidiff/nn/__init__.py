"""minidiff.nn: the networks, one concept per file.

    embeddings.py    time embeddings (sinusoidal, Gaussian Fourier), EmbedFC, Dense, ContextTokens
    blocks.py        ResidualConvBlock, UnetDown, UnetUp (the sprites course), ResnetBlock (GroupNorm)
    attention.py     CrossAttention, TransformerBlock, SpatialTransformer
    context_unet.py  ContextUnet, the sprites course's model
    score_unet.py    ScoreUNet, ResidualScoreUNet, ConditionalScoreUNet, LatentScoreUNet
    autoencoder.py   AutoEncoder (+ variational option), reconstruction_loss
    basic_unet.py    BasicUNet, corrupt, naive_sample: the Hugging Face course's toy lesson
    unet2d.py        UNet2D: a configurable UNet (ResNet + attention levels, class embedding)
    dit.py           DiT: a Diffusion Transformer (patches, adaLN-Zero blocks, a null class)
    inference.py     for_inference: BatchNorm folded into convolutions, GELU on the NHWC view

Every network is called `model(x, t, context=None)` with `t` a float tensor [B] in (0, 1].
"""

from .attention import CrossAttention, SpatialTransformer, TransformerBlock
from .autoencoder import AutoEncoder, edge_loss, reconstruction_loss
from .basic_unet import BasicUNet, corrupt, naive_sample
from .blocks import ResidualConvBlock, ResnetBlock, UnetDown, UnetUp
from .context_unet import ContextUnet
from .dit import DiT, DiTBlock, patchify, unpatchify
from .embeddings import (
    ContextTokens,
    Dense,
    EmbedFC,
    GaussianFourierProjection,
    SinusoidalEmbedding,
    as_time_batch,
    sinusoidal_embedding,
)
from .inference import fold_batchnorm, for_inference
from .score_unet import ConditionalScoreUNet, LatentScoreUNet, ResidualScoreUNet, ScoreUNet
from .unet2d import AttentionBlock, UNet2D

__all__ = [
    "as_time_batch",
    "sinusoidal_embedding",
    "SinusoidalEmbedding",
    "GaussianFourierProjection",
    "EmbedFC",
    "Dense",
    "ContextTokens",
    "ResidualConvBlock",
    "UnetDown",
    "UnetUp",
    "ResnetBlock",
    "CrossAttention",
    "TransformerBlock",
    "SpatialTransformer",
    "ContextUnet",
    "ScoreUNet",
    "ResidualScoreUNet",
    "ConditionalScoreUNet",
    "LatentScoreUNet",
    "AutoEncoder",
    "reconstruction_loss",
    "edge_loss",
    "BasicUNet",
    "corrupt",
    "naive_sample",
    "UNet2D",
    "DiT",
    "DiTBlock",
    "patchify",
    "unpatchify",
    "AttentionBlock",
    "fold_batchnorm",
    "for_inference",
]
