"""The encoder the dense Perceiver IO models (optical flow, multimodal autoencoding) share: a latent array, one
cross-attend to the inputs, then one block of self-attends (unshared): HF's PerceiverModel with num_blocks 1."""

from __future__ import annotations

from typing import Any

from torch import nn

from .attention import CrossAttentionLayer, SelfAttentionBlock
from .weight_init import init_latents


class LatentEncoderModel(nn.Module):
    """Base of PerceiverIOFlow and PerceiverIOMultimodalAutoencoder: builds their `latents` (N, D), `encoder` and
    `processor`, and documents the arguments they share (jsonargparse reads a base class's Args: for a subclass).

    Args:
        num_latents: N, rows of the latent array.
        latent_dim: D, channels of the latent array.
        num_self_attends: self-attention layers of the processor (one block, unshared).
        num_self_attention_heads: heads of the processor's self-attention.
        num_cross_attention_heads: heads of the encoder's cross-attention.
        cross_attention_widening_factor: the encoder MLP's hidden width / latent_dim.
        self_attention_widening_factor: the processor MLPs' hidden width / latent_dim.
        decode_chunk_size: queries per chunk when decoding without autograd (eval); null: all at once.
        dropout: on attention probabilities and residual branches.
        activation_checkpointing: recompute each attention layer's activations in backward (less memory).
    """

    def _init_encoder(self, input_channels: int, config: Any) -> None:
        """latents, encoder (latents x inputs of input_channels) and processor from the model's config."""
        c, ckpt = config, config.activation_checkpointing
        self.latents = init_latents(c.num_latents, c.latent_dim)  # (N, D)
        self.encoder = CrossAttentionLayer(
            c.latent_dim,
            input_channels,
            c.num_cross_attention_heads,
            None,
            None,
            c.cross_attention_widening_factor,
            c.dropout,
            checkpoint=ckpt,
        )
        self.processor = SelfAttentionBlock(
            c.num_self_attends,
            c.latent_dim,
            num_heads=c.num_self_attention_heads,
            widening_factor=c.self_attention_widening_factor,
            dropout=c.dropout,
            checkpoint=ckpt,
        )
