"""VL-BART (Cho et al. 2021, VL-T5; Sung et al. 2022, VL-Adapter): BART whose encoder reads image region features
after the text, as the image-text experiments of MTL-LoRA (and of DoRA, VL-Adapter) run it.

Encoder input, as VL-T5's `JointEncoder` builds it:

    [ LayerNorm_emb(token embedding + position), ... text (right-padded) ... | visual token 1, ..., visual token V ]

with each visual token = LN(W_f feat) + LN(W_p [x1, y1, x2, y2, a]) + image-order embedding + object-order
embedding. Only the text gets BART's position embeddings and `layernorm_embedding`; visual tokens carry their box,
which image they come from (NLVR2 has two) and their index within that image. The encoder's attention mask is the
text's, followed by ones for the visual tokens (or `vis_attention_mask`); the decoder cross-attends to all of it.

Inputs (what a data pipeline produces per batch):
- `input_ids`, `attention_mask` [B, L]: the text, right-padded (encoder-decoder models pad right).
- `vis_feats` [B, V, feat_dim] float: region or grid features (VL-Adapter's CLIP RN101 grid max-pooled to 6×6, so
  V = 36 per image; `mtllora.benchmarks.image_text_data.downsample_grid` does that).
- `vis_pos` [B, V, 4] float: boxes (x1, y1, x2, y2) normalised to [0, 1] by the image width and height; the
  official CLIP-feature runs pass zeros (grid cells have no boxes).
- `img_order_ids` [B, V] long, optional (default all 0): which image each visual token comes from. NLVR2: the two
  images' tokens concatenated along V (`concat_images`), ids 0 for the first image's, 1 for the second's.
- `vis_attention_mask` [B, V], optional (default all 1): 0 for padding visual tokens, when rows of one batch have
  different V (NLVR2's 72 next to VQA's 36).

Differences from VL-T5, all kept deliberately:
- VL-T5's fifth box coordinate is `(pos[3] - pos[2]) · (pos[1] - pos[0])`, written for (x1, x2, y1, y2) boxes
  while its data gives (x1, y1, x2, y2), so it is (y2 − x2)(y1 − x1), not the area. Kept for parity with the
  official code (zero for the zero boxes of the CLIP-feature runs either way).
- VL-T5 takes the object-order embeddings from 100 `<vis_extra_id_i>` tokens appended to BART's vocabulary (random
  rows, frozen with the shared embedding in the MTL-LoRA recipe). Here they are their own table under
  `visual_embedding` (same init, N(0, init_std)), so the vocabulary and tokenizer stay bart-base's; a `trainable`
  regex `visual_embedding` therefore trains them too (76,800 parameters at d_model 768).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import BartConfig, BartForConditionalGeneration
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput
from transformers.models.bart.modeling_bart import BartEncoder

# Visual hyper-parameters stored in the BartConfig (so save_pretrained / from_pretrained round-trip them):
# feature size (CLIP RN101 and Faster R-CNN: 2048), images per example (NLVR2: 2), visual tokens per image with an
# object-order embedding (VL-T5: 100).
VISUAL_DEFAULTS = {"feat_dim": 2048, "n_images": 2, "n_obj_orders": 100}


class VisualEmbedding(nn.Module):
    """Maps visual tokens (features, boxes, image ids) to d_model, as VL-T5's `VisualEmbedding` with its defaults
    (`individual_vis_layer_norm`, `use_vis_order_embedding`): LN(W_f f) + LN(W_p box5) + E_img + E_obj."""

    def __init__(self, d_model: int, feat_dim: int, n_images: int, n_obj_orders: int) -> None:
        super().__init__()
        self.feat_embedding = nn.Sequential(nn.Linear(feat_dim, d_model), nn.LayerNorm(d_model))
        self.absolute_vis_pos_embedding = nn.Sequential(nn.Linear(5, d_model), nn.LayerNorm(d_model))
        self.img_order_embedding = nn.Embedding(n_images, d_model)
        self.obj_order_embedding = nn.Embedding(n_obj_orders, d_model)

    def forward(
        self,
        vis_feats: torch.Tensor,
        vis_pos: torch.Tensor,
        img_order_ids: torch.Tensor | None = None,
        vis_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Returns the visual tokens' embeddings [B, V, d_model], in the feature layer's dtype."""
        batch, num, _ = vis_feats.shape
        if vis_pos.shape != (batch, num, 4):
            raise ValueError(f"vis_pos must have shape {(batch, num, 4)} for vis_feats {tuple(vis_feats.shape)}, "
                             f"got {tuple(vis_pos.shape)}")  # fmt: skip
        dtype = self.feat_embedding[0].weight.dtype
        vis_feats, vis_pos = vis_feats.to(dtype), vis_pos.to(dtype)
        area = (vis_pos[..., 3] - vis_pos[..., 2]) * (vis_pos[..., 1] - vis_pos[..., 0])  # VL-T5's (module docstring)
        boxes = torch.cat([vis_pos, area.unsqueeze(-1)], dim=-1)
        if img_order_ids is None:
            img_order_ids = torch.zeros(batch, num, dtype=torch.long, device=vis_feats.device)
        n_images = self.img_order_embedding.num_embeddings
        if img_order_ids.shape != (batch, num) or bool(((img_order_ids < 0) | (img_order_ids >= n_images)).any()):
            raise ValueError(
                f"img_order_ids must have shape {(batch, num)} with ids in 0..{n_images - 1} (n_images={n_images}), "
                f"got shape {tuple(img_order_ids.shape)}, values {sorted(img_order_ids.unique().tolist())}"
            )
        obj_order_ids = object_order_ids(img_order_ids, n_images)
        if vis_attention_mask is not None:
            obj_order_ids = obj_order_ids * vis_attention_mask.to(obj_order_ids.dtype)  # padding: any id will do
        n_obj = self.obj_order_embedding.num_embeddings
        if int(obj_order_ids.max()) >= n_obj:
            raise ValueError(
                f"an image has {int(obj_order_ids.max()) + 1} visual tokens, more than n_obj_orders={n_obj}; "
                "pool the features (image_text_data.downsample_grid) or build the model with a larger n_obj_orders"
            )
        return (
            self.feat_embedding(vis_feats)
            + self.absolute_vis_pos_embedding(boxes)
            + self.img_order_embedding(img_order_ids)
            + self.obj_order_embedding(obj_order_ids)
        )


def object_order_ids(img_order_ids: torch.Tensor, n_images: int) -> torch.Tensor:
    """Returns each visual token's index among the tokens of its own image, [B, V]: VL-T5's object-order ids
    (0..V-1 for one image; 0..V1-1 then 0..V2-1 for NLVR2's two images concatenated)."""
    one_hot = nn.functional.one_hot(img_order_ids, n_images)
    return one_hot.cumsum(dim=1).gather(2, img_order_ids.unsqueeze(-1)).squeeze(-1) - 1


class VLBartEncoder(BartEncoder):
    """BART's encoder reading visual tokens after the text (VL-T5's `JointEncoder`): returns hidden states for the
    L text positions followed by the V visual tokens."""

    def __init__(self, config: BartConfig) -> None:
        super().__init__(config)
        self.visual_embedding = VisualEmbedding(config.d_model, config.feat_dim, config.n_images, config.n_obj_orders)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        vis_feats: torch.Tensor,
        vis_pos: torch.Tensor,
        img_order_ids: torch.Tensor | None = None,
        vis_attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutput:
        """Returns BaseModelOutput with last_hidden_state [B, L + V, d_model]; `attention_mask` is the full [B, L + V]
        mask (`encoder_attention_mask`)."""
        text = self.embed_tokens(input_ids) + self.embed_positions(input_ids).to(input_ids.device)
        text = self.layernorm_embedding(text)
        visual = self.visual_embedding(vis_feats, vis_pos, img_order_ids, vis_attention_mask)
        hidden = torch.cat([text, visual.to(text.dtype)], dim=1)
        hidden = nn.functional.dropout(hidden, p=self.dropout, training=self.training)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)
        for layer in self.layers:
            # LayerDrop (off in bart-base), as BartEncoder does it.
            if self.training and self.layerdrop > 0.0 and torch.rand([]) < self.layerdrop:
                continue
            hidden = layer(hidden, mask, **kwargs)
        return BaseModelOutput(last_hidden_state=hidden)


def encoder_attention_mask(
    attention_mask: torch.Tensor, num_visual: int, vis_attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Returns the text mask followed by the visual tokens' ([B, L + V]): ones, or `vis_attention_mask`."""
    if vis_attention_mask is None:
        vis_attention_mask = attention_mask.new_ones(attention_mask.shape[0], num_visual)
    return torch.cat([attention_mask, vis_attention_mask.to(attention_mask.dtype)], dim=1)


class VLBartForConditionalGeneration(BartForConditionalGeneration):
    """BartForConditionalGeneration with VL-T5's visual tokens in the encoder (module docstring).

    `from_pretrained("facebook/bart-base", feat_dim=2048)` loads BART's weights and initialises
    `model.encoder.visual_embedding` freshly (HF reports it as newly initialised); `VLBartForConditionalGeneration(
    BartConfig(...), feat_dim=...)` builds a random one. The visual hyper-parameters (`VISUAL_DEFAULTS`) are stored
    in the config. Loss, label shifting (-100 ignored) and the decoder are BART's; a Hugging Face Trainer trains it
    from batches with `vis_feats`/`vis_pos` columns (and `task_ids`, with `remove_unused_columns=False`)."""

    def __init__(
        self,
        config: BartConfig,
        feat_dim: int | None = None,
        n_images: int | None = None,
        n_obj_orders: int | None = None,
    ) -> None:
        given = {"feat_dim": feat_dim, "n_images": n_images, "n_obj_orders": n_obj_orders}
        for key, default in VISUAL_DEFAULTS.items():
            value = given[key] if given[key] is not None else getattr(config, key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
            setattr(config, key, value)
        super().__init__(config)
        self.model.encoder = VLBartEncoder(config)
        self.post_init()  # ties the new encoder's token embedding to the shared one and initialises visual_embedding

    def encode(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        vis_feats: torch.Tensor,
        vis_pos: torch.Tensor,
        img_order_ids: torch.Tensor | None = None,
        vis_attention_mask: torch.Tensor | None = None,
    ) -> tuple[BaseModelOutput, torch.Tensor]:
        """Returns (encoder outputs [B, L + V, d], their attention mask [B, L + V]); the text mask defaults to the
        non-padding tokens, as in VL-T5."""
        if attention_mask is None:
            attention_mask = input_ids.ne(self.config.pad_token_id).long()
        if vis_feats.dim() != 3 or vis_feats.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"vis_feats must have shape [batch={input_ids.shape[0]}, visual tokens, feat_dim="
                f"{self.config.feat_dim}], got {tuple(vis_feats.shape)}"
            )
        if vis_feats.shape[-1] != self.config.feat_dim:
            raise ValueError(f"vis_feats has {vis_feats.shape[-1]} features, the model feat_dim={self.config.feat_dim}")
        mask = encoder_attention_mask(attention_mask, vis_feats.shape[1], vis_attention_mask)
        outputs = self.model.encoder(input_ids, mask, vis_feats, vis_pos, img_order_ids, vis_attention_mask)
        return outputs, mask

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        vis_feats: torch.Tensor | None = None,
        vis_pos: torch.Tensor | None = None,
        img_order_ids: torch.Tensor | None = None,
        vis_attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> Seq2SeqLMOutput:
        """Returns BART's Seq2SeqLMOutput (loss when `labels` are given, -100 ignored, decoder inputs shifted from the
        labels). Encodes text + visual tokens unless `encoder_outputs` are given (generation); with them,
        `attention_mask` is the [B, L + V] mask that `encode` returned."""
        if encoder_outputs is None:
            if input_ids is None or vis_feats is None or vis_pos is None:
                raise ValueError("VL-BART needs input_ids, vis_feats and vis_pos (or encoder_outputs from encode())")
            encoder_outputs, attention_mask = self.encode(
                input_ids, attention_mask, vis_feats, vis_pos, img_order_ids, vis_attention_mask
            )
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            labels=labels,
            **kwargs,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        vis_feats: torch.Tensor | None = None,
        vis_pos: torch.Tensor | None = None,
        img_order_ids: torch.Tensor | None = None,
        vis_attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.LongTensor:
        """Returns the generated decoder tokens [B·num_return_sequences, T] (decoder start token first): encodes the
        text and visual tokens once, then runs Hugging Face generation (greedy, beam search, ...; `kwargs`) on the
        encoder outputs. Under `use_tasks(model, ids)` each sample keeps its task, its beams included."""
        if vis_feats is None or vis_pos is None:
            raise ValueError("VL-BART generation needs vis_feats and vis_pos")
        encoder_outputs, mask = self.encode(
            input_ids, attention_mask, vis_feats, vis_pos, img_order_ids, vis_attention_mask
        )
        return super().generate(encoder_outputs=encoder_outputs, attention_mask=mask, **kwargs)


def concat_images(
    feats: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (vis_feats, vis_pos, img_order_ids) for examples with several images (NLVR2: two): the images' tokens
    concatenated along the token axis, ids 0 for the first image's tokens, 1 for the second's, as VL-T5 feeds
    NLVR2. Works per example ([V_i, D] and [V_i, 4]) or per batch ([B, V_i, D] and [B, V_i, 4])."""
    if len(feats) != len(boxes) or not feats:
        raise ValueError(f"need one boxes tensor per image, got {len(feats)} feature and {len(boxes)} box tensors")
    ids = [torch.full(f.shape[:-1], i, dtype=torch.long, device=f.device) for i, f in enumerate(feats)]
    return torch.cat(list(feats), dim=-2), torch.cat(list(boxes), dim=-2), torch.cat(ids, dim=-1)
