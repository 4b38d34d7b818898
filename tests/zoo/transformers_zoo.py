"""Tiny `transformers` architectures from configuration classes (random weights, no download).

Each builder returns `(wrapper module, example inputs)`: the wrapper returns only the main
tensor (logits or last hidden state) with caches off, so the export is one clean graph.
Sizes: hidden 32-64, 2 layers, 2-4 heads, vocabulary 100-200, 8 tokens, 32x32 images, 1600
audio samples.
"""

from __future__ import annotations

import torch
import transformers as tf

from tests.zoo import register

torch.manual_seed(0)
SEQ = 8
VOCAB = 128


class MainOutput(torch.nn.Module):
    """Call the model with keyword inputs and return one tensor of its output."""

    def __init__(self, model, names, field):
        super().__init__()
        self.model, self.names, self.field = model, names, field

    def forward(self, *args):
        kwargs = dict(zip(self.names, args, strict=True))
        extra = {"use_cache": False} if getattr(self.model.config, "use_cache", None) is not None else {}
        out = self.model(**kwargs, **extra, return_dict=True)
        return getattr(out, self.field)


def _ids(n=SEQ):
    return torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(0))


def _eager(cfg):
    """Eager attention; mixture-of-experts layers run every expert as one batched matmul on the
    experts their router picked (static shapes; the default grouped_mm does not export)."""
    cfg._attn_implementation = "eager"
    if hasattr(cfg, "num_local_experts"):
        cfg._experts_implementation = "batched_mm"
    return cfg


def _lm(cls, cfg):
    model = cls(_eager(cfg)).eval()
    return MainOutput(model, ["input_ids"], "logits"), (_ids(),)


def _hidden(cls, cfg, names, inputs, field="last_hidden_state"):
    model = cls(_eager(cfg)).eval()
    return MainOutput(model, names, field), inputs


SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=64)


def _decoder(name, cls, cfg_cls, **kw):
    register(name, "decoder")(lambda: _lm(cls, cfg_cls(**{**SMALL, **kw})))


_decoder("gpt2", tf.GPT2LMHeadModel, lambda **k: tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                                                n_positions=64, bos_token_id=0,
                                                                eos_token_id=0))
_decoder("llama", tf.LlamaForCausalLM, tf.LlamaConfig, num_key_value_heads=2)
_decoder("mistral", tf.MistralForCausalLM, tf.MistralConfig, num_key_value_heads=2, sliding_window=4)
_decoder("qwen2", tf.Qwen2ForCausalLM, tf.Qwen2Config, num_key_value_heads=2)
_decoder("qwen3", tf.Qwen3ForCausalLM, tf.Qwen3Config, num_key_value_heads=2, head_dim=8)
_decoder("gemma", tf.GemmaForCausalLM, tf.GemmaConfig, num_key_value_heads=2, head_dim=8)
_decoder("gemma2", tf.Gemma2ForCausalLM, tf.Gemma2Config, num_key_value_heads=2, head_dim=8, sliding_window=4)
_decoder("phi", tf.PhiForCausalLM, tf.PhiConfig, partial_rotary_factor=0.5)
_decoder("phi3", tf.Phi3ForCausalLM, tf.Phi3Config, pad_token_id=0)
_decoder("gpt-neox", tf.GPTNeoXForCausalLM, tf.GPTNeoXConfig, rotary_pct=0.5)
_decoder("falcon", tf.FalconForCausalLM, lambda **k: tf.FalconConfig(vocab_size=VOCAB, hidden_size=32,
                                                                      num_hidden_layers=2, num_attention_heads=4,
                                                                      alibi=True, new_decoder_architecture=False))
_decoder("bloom", tf.BloomForCausalLM, lambda **k: tf.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2,
                                                                   n_head=4))
_decoder("opt", tf.OPTForCausalLM, lambda **k: tf.OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64,
                                                             num_hidden_layers=2, num_attention_heads=4,
                                                             word_embed_proj_dim=32, max_position_embeddings=64))

ENC = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
           max_position_embeddings=64)


@register("bert", "encoder")
def bert():
    return _hidden(tf.BertModel, tf.BertConfig(**ENC), ["input_ids"], (_ids(),))


@register("deberta-v2", "encoder")
def deberta_v2():
    cfg = tf.DebertaV2Config(**ENC, relative_attention=True, position_buckets=16, pos_att_type=["c2p", "p2c"],
                             max_relative_positions=32)
    return _hidden(tf.DebertaV2Model, cfg, ["input_ids"], (_ids(),))


@register("t5", "seq2seq")
def t5():
    cfg = tf.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, decoder_start_token_id=0)
    return _hidden(tf.T5ForConditionalGeneration, cfg, ["input_ids", "decoder_input_ids"], (_ids(), _ids(4)),
                   "logits")


@register("bart", "seq2seq")
def bart():
    cfg = tf.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64)
    return _hidden(tf.BartForConditionalGeneration, cfg, ["input_ids", "decoder_input_ids"], (_ids(), _ids(4)),
                   "logits")


def _image(size=32, channels=3):
    return (torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(0)),)


@register("vit", "vision")
def vit():
    cfg = tf.ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       image_size=32, patch_size=8)
    return _hidden(tf.ViTModel, cfg, ["pixel_values"], _image())


@register("swin", "vision")
def swin():
    cfg = tf.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4)
    return _hidden(tf.SwinModel, cfg, ["pixel_values"], _image())


@register("beit", "vision")
def beit():
    cfg = tf.BeitConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, image_size=32, patch_size=8, use_relative_position_bias=True)
    return _hidden(tf.BeitModel, cfg, ["pixel_values"], _image())


@register("siglip-vision", "vision")
def siglip_vision():
    cfg = tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=32, patch_size=8)
    return _hidden(tf.SiglipVisionModel, cfg, ["pixel_values"], _image())


@register("mobilevit", "conv")
def mobilevit():
    cfg = tf.MobileViTConfig(image_size=32, patch_size=2, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16,
                             24, 32, 64], num_attention_heads=2)
    return _hidden(tf.MobileViTModel, cfg, ["pixel_values"], _image())


@register("convnext", "conv")
def convnext():
    cfg = tf.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], image_size=32)
    return _hidden(tf.ConvNextModel, cfg, ["pixel_values"], _image())


@register("segformer", "conv")
def segformer():
    cfg = tf.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                             patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                             decoder_hidden_size=32, num_labels=3)
    return _hidden(tf.SegformerForSemanticSegmentation, cfg, ["pixel_values"], _image(), "logits")


def _audio(n=1600):
    return (torch.randn(1, n, generator=torch.Generator().manual_seed(0)),)


AUDIO = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16,
             num_conv_pos_embedding_groups=4, vocab_size=32)


@register("wav2vec2", "audio")
def wav2vec2():
    return _hidden(tf.Wav2Vec2Model, tf.Wav2Vec2Config(**AUDIO), ["input_values"], _audio())


@register("hubert", "audio")
def hubert():
    return _hidden(tf.HubertModel, tf.HubertConfig(**AUDIO), ["input_values"], _audio())


@register("whisper-encoder", "audio")
def whisper_encoder():
    cfg = tf.WhisperConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=16, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    model = tf.WhisperModel(_eager(cfg)).eval()
    feats = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(0))
    return MainOutput(model.encoder, ["input_features"], "last_hidden_state"), (feats,)


# -- more of the same kinds (held out from the list) -----------------------------------
_decoder("gpt-j", tf.GPTJForCausalLM, lambda **k: tf.GPTJConfig(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                                                 rotary_dim=4, n_positions=64))
_decoder("codegen", tf.CodeGenForCausalLM, lambda **k: tf.CodeGenConfig(vocab_size=VOCAB, n_embd=32, n_layer=2,
                                                                         n_head=4, rotary_dim=4, n_positions=64,
                                                                         n_ctx=64))
_decoder("gpt-bigcode", tf.GPTBigCodeForCausalLM, lambda **k: tf.GPTBigCodeConfig(vocab_size=VOCAB, n_embd=32,
                                                                                   n_layer=2, n_head=4,
                                                                                   n_positions=64, multi_query=True))
_decoder("olmo", tf.OlmoForCausalLM, tf.OlmoConfig, num_key_value_heads=2, pad_token_id=0)
_decoder("stablelm", tf.StableLmForCausalLM, tf.StableLmConfig, num_key_value_heads=2)
_decoder("starcoder2", tf.Starcoder2ForCausalLM, tf.Starcoder2Config, num_key_value_heads=2)
_decoder("mixtral", tf.MixtralForCausalLM, tf.MixtralConfig, num_key_value_heads=2, num_local_experts=4,
         num_experts_per_tok=2)
_decoder("mpt", tf.MptForCausalLM, lambda **k: tf.MptConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4,
                                                             max_seq_len=64))


def _encoder(name, cls, cfg):
    register(name, "encoder")(lambda: _hidden(cls, cfg(), ["input_ids"], (_ids(),)))


_encoder("roberta", tf.RobertaModel, lambda: tf.RobertaConfig(**ENC, pad_token_id=1))
_encoder("distilbert", tf.DistilBertModel, lambda: tf.DistilBertConfig(vocab_size=VOCAB, dim=32, hidden_dim=64,
                                                                      n_layers=2, n_heads=4,
                                                                      max_position_embeddings=64))
_encoder("albert", tf.AlbertModel, lambda: tf.AlbertConfig(**ENC, embedding_size=16))
_encoder("electra", tf.ElectraModel, lambda: tf.ElectraConfig(**ENC, embedding_size=16))
_encoder("xlnet", tf.XLNetModel, lambda: tf.XLNetConfig(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4,
                                                        d_inner=64))


def _vision(name, family, cls, cfg, field="last_hidden_state"):
    register(name, family)(lambda: _hidden(cls, cfg(), ["pixel_values"], _image(), field))


_vision("deit", "vision", tf.DeiTModel, lambda: tf.DeiTConfig(hidden_size=32, intermediate_size=64,
                                                              num_hidden_layers=2, num_attention_heads=4,
                                                              image_size=32, patch_size=8))
_vision("dinov2", "vision", tf.Dinov2Model, lambda: tf.Dinov2Config(hidden_size=32, num_hidden_layers=2,
                                                                    num_attention_heads=4, image_size=32,
                                                                    patch_size=8, mlp_ratio=2))
_vision("convnextv2", "conv", tf.ConvNextV2Model, lambda: tf.ConvNextV2Config(hidden_sizes=[8, 16, 24, 32],
                                                                              depths=[1, 1, 1, 1]))
_vision("poolformer", "conv", tf.PoolFormerModel, lambda: tf.PoolFormerConfig(hidden_sizes=[8, 16, 24, 32],
                                                                              depths=[1, 1, 1, 1]))
_vision("resnet", "conv", tf.ResNetModel, lambda: tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32],
                                                                  depths=[1, 1, 1, 1]))
_vision("mobilenet-v2", "conv", tf.MobileNetV2Model, lambda: tf.MobileNetV2Config(image_size=32,
                                                                                  depth_multiplier=0.25))


@register("wavlm", "audio")
def wavlm():
    return _hidden(tf.WavLMModel, tf.WavLMConfig(**AUDIO, num_buckets=16, max_bucket_distance=40),
                   ["input_values"], _audio())


@register("data2vec-audio", "audio")
def data2vec_audio():
    return _hidden(tf.Data2VecAudioModel, tf.Data2VecAudioConfig(**AUDIO), ["input_values"], _audio())


@register("marian", "seq2seq")
def marian():
    cfg = tf.MarianConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                          decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                          max_position_embeddings=64, pad_token_id=0, decoder_start_token_id=0)
    return _hidden(tf.MarianMTModel, cfg, ["input_ids", "decoder_input_ids"], (_ids(), _ids(4)), "logits")


@register("mt5", "seq2seq")
def mt5():
    cfg = tf.MT5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                       relative_attention_num_buckets=8, decoder_start_token_id=0)
    return _hidden(tf.MT5ForConditionalGeneration, cfg, ["input_ids", "decoder_input_ids"], (_ids(), _ids(4)),
                   "logits")


@register("clip-text", "encoder")
def clip_text():
    cfg = tf.CLIPTextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=64, eos_token_id=2, bos_token_id=1,
                            pad_token_id=0)
    return _hidden(tf.CLIPTextModel, cfg, ["input_ids"], (_ids(),))


# -- held out from the first zoo: state-space and recurrent decoders, mixtures of experts with
# transformers' default experts implementation, encoders whose pooler the output leaves unread,
# more seq2seq, audio and vision families (a sweep of 90 architectures found these worth keeping).
def _auto(name, family, cfg, names, inputs, field="last_hidden_state", auto=None):
    """`auto` (default AutoModel) built from `cfg()`, called with `names` = `inputs()`."""
    def build():
        model = (auto or tf.AutoModel).from_config(_eager(cfg())).eval()
        return MainOutput(model, names, field), inputs()

    register(name, family)(build)


def _auto_lm(name, cfg):
    _auto(name, "decoder", cfg, ["input_ids"], lambda: (_ids(),), "logits", tf.AutoModelForCausalLM)


KV = dict(num_key_value_heads=2)
# Qwen2-MoE and OLMoE name their expert count num_experts: `_eager` leaves them on transformers'
# default grouped_mm experts, which the torch frontend switches to batched_mm for the export.
_auto_lm("qwen2-moe", lambda: tf.Qwen2MoeConfig(**SMALL, **KV, num_experts=4, num_experts_per_tok=2,
                                                moe_intermediate_size=32, shared_expert_intermediate_size=32))
_auto_lm("olmoe", lambda: tf.OlmoeConfig(**SMALL, **KV, num_experts=4, num_experts_per_tok=2))
_auto_lm("granitemoe", lambda: tf.GraniteMoeConfig(**SMALL, **KV, num_local_experts=4, num_experts_per_tok=2))
_auto_lm("cohere", lambda: tf.CohereConfig(**SMALL, **KV))
_auto_lm("olmo2", lambda: tf.Olmo2Config(**SMALL, **KV))
_auto_lm("gemma3-text", lambda: tf.Gemma3TextConfig(**SMALL, **KV, head_dim=8, sliding_window=4))
_auto_lm("persimmon", lambda: tf.PersimmonConfig(**SMALL))
_auto_lm("lfm2", lambda: tf.Lfm2Config(**SMALL, **KV, layer_types=["conv", "full_attention"]))
_auto_lm("mamba", lambda: tf.MambaConfig(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2,
                                         expand=2, conv_kernel=4, use_cache=False))
_auto_lm("mamba2", lambda: tf.Mamba2Config(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2,
                                           expand=2, num_heads=8, head_dim=8, n_groups=1, conv_kernel=4, chunk_size=8,
                                           use_cache=False))
_auto_lm("rwkv", lambda: tf.RwkvConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, attention_hidden_size=32,
                                       intermediate_size=64, context_length=64, use_cache=False))
_auto_lm("jamba", lambda: tf.JambaConfig(**SMALL, **KV, num_experts=2, num_experts_per_tok=1, attn_layer_period=2,
                                         attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
                                         mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=4))
_auto_lm("recurrent-gemma", lambda: tf.RecurrentGemmaConfig(**SMALL, **KV, lru_width=32, attention_window_size=4,
                                                            block_types=["recurrent", "attention"]))
_auto_lm("ctrl", lambda: tf.CTRLConfig(vocab_size=VOCAB, n_embd=32, dff=64, n_layer=2, n_head=4, n_positions=64))


def _text(name, cfg):
    _auto(name, "encoder", cfg, ["input_ids"], lambda: (_ids(),))


# the pooler (and MobileBERT's, ESM's contact head) is never read for last_hidden_state: the
# dynamo export leaves it out, and the frontend keeps that export
_text("mobilebert", lambda: tf.MobileBertConfig(vocab_size=VOCAB, hidden_size=32, embedding_size=16,
                                                intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                intra_bottleneck_size=16, true_hidden_size=16,
                                                num_feedforward_networks=2))
_text("esm", lambda: tf.EsmConfig(**ENC, pad_token_id=1, position_embedding_type="rotary"))
_text("squeezebert", lambda: tf.SqueezeBertConfig(**ENC, embedding_size=32, q_groups=2, k_groups=2, v_groups=2,
                                                  post_attention_groups=2, intermediate_groups=2, output_groups=2))
_text("convbert", lambda: tf.ConvBertConfig(**ENC, embedding_size=32))
_text("longformer", lambda: tf.LongformerConfig(**ENC, attention_window=4, pad_token_id=1))
_text("modernbert", lambda: tf.ModernBertConfig(**ENC, global_attn_every_n_layers=2, local_attention=4,
                                                pad_token_id=0))
_auto("canine", "encoder", lambda: tf.CanineConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                   num_attention_heads=4, downsampling_rate=4, num_hash_buckets=64,
                                                   num_hash_functions=2, local_transformer_stride=4,
                                                   max_position_embeddings=64),
      ["input_ids"], lambda: (_ids(16),))

S2S = dict(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
           decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, pad_token_id=0, decoder_start_token_id=0)


def _s2s(name, cfg):
    _auto(name, "seq2seq", cfg, ["input_ids", "decoder_input_ids"], lambda: (_ids(), _ids(4)), "logits",
          tf.AutoModelForSeq2SeqLM)


_s2s("pegasus", lambda: tf.PegasusConfig(**S2S, max_position_embeddings=64))
_s2s("mbart", lambda: tf.MBartConfig(**S2S, max_position_embeddings=64))
_s2s("led", lambda: tf.LEDConfig(**S2S, max_encoder_position_embeddings=64, max_decoder_position_embeddings=64,
                                 attention_window=[4, 4]))
_s2s("prophetnet", lambda: tf.ProphetNetConfig(vocab_size=VOCAB, hidden_size=32, encoder_ffn_dim=64,
                                               decoder_ffn_dim=64, num_encoder_layers=2, num_decoder_layers=2,
                                               num_encoder_attention_heads=4, num_decoder_attention_heads=4, ngram=2,
                                               num_buckets=8, relative_max_distance=16, max_position_embeddings=64,
                                               decoder_start_token_id=0))
_s2s("fsmt", lambda: tf.FSMTConfig(langs=["en", "de"], src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, d_model=32,
                                   encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                   decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                   max_position_embeddings=64, pad_token_id=1, decoder_start_token_id=2))


def _speech(name, cfg):
    _auto(name, "audio", cfg, ["input_values"], _audio)


_speech("sew-d", lambda: tf.SEWDConfig(**AUDIO, squeeze_factor=2, position_buckets=16, max_position_embeddings=64,
                                       relative_attention=True))
_speech("unispeech-sat", lambda: tf.UniSpeechSatConfig(**AUDIO))
_speech("wav2vec2-conformer", lambda: tf.Wav2Vec2ConformerConfig(**AUDIO, position_embeddings_type="relative"))
_auto("speech2text", "audio", lambda: tf.Speech2TextConfig(
    vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
    decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=64,
    max_target_positions=64, input_feat_per_channel=16, conv_channels=16, num_conv_layers=2, pad_token_id=0,
    decoder_start_token_id=0), ["input_features", "decoder_input_ids"],
    lambda: (torch.randn(1, 32, 16, generator=torch.Generator().manual_seed(0)), _ids(4)), "logits",
    tf.AutoModelForSpeechSeq2Seq)
_auto("encodec", "audio", lambda: tf.EncodecConfig(hidden_size=16, num_filters=4, num_residual_layers=1,
                                                   upsampling_ratios=[4, 2], codebook_size=32, codebook_dim=16,
                                                   num_lstm_layers=1, sampling_rate=8000, target_bandwidths=[12.0]),
      ["input_values"], lambda: (torch.randn(1, 1, 256, generator=torch.Generator().manual_seed(0)),), "audio_values")

VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
           patch_size=8)


def _pixels(name, family, cfg, size=32, field="last_hidden_state", auto=None):
    _auto(name, family, cfg, ["pixel_values"], lambda: _image(size), field, auto)


_pixels("clip-vision", "vision", lambda: tf.CLIPVisionConfig(**VIT))
_pixels("vitdet", "vision", lambda: tf.VitDetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                    image_size=32, patch_size=8, pretrain_image_size=32, mlp_ratio=2,
                                                    window_size=2, window_block_indices=[0],
                                                    use_relative_position_embeddings=True))
_pixels("data2vec-vision", "vision", lambda: tf.Data2VecVisionConfig(**VIT, use_relative_position_bias=True))
_pixels("swinv2", "vision", lambda: tf.Swinv2Config(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2],
                                                    num_heads=[2, 4], window_size=4))
_pixels("focalnet", "vision", lambda: tf.FocalNetConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                                        focal_levels=[2, 2], focal_windows=[3, 3]))


@register("levit", "vision")
def levit():
    """LeViT caches `attention_biases[:, idxs]` in eval mode on its first call (under no_grad, the
    cache has no gradient): each attention module computes it afresh here, so that torch's
    gradients, like the export, see the biases read."""
    cfg = tf.LevitConfig(image_size=64, hidden_sizes=[32, 48, 64], num_attention_heads=[2, 3, 4], depths=[1, 1, 1],
                         key_dim=[8, 8, 8], down_ops=[["Subsample", 8, 2, 4, 2, 2], ["Subsample", 8, 3, 4, 2, 2]])
    model = tf.LevitModel(cfg).eval()
    for m in model.modules():
        if hasattr(m, "attention_bias_cache"):
            m.get_attention_biases = lambda device, m=m: m.attention_biases[:, m.attention_bias_idxs]
    return MainOutput(model, ["pixel_values"], "last_hidden_state"), _image(64)
_pixels("pvt-v2", "vision", lambda: tf.PvtV2Config(image_size=32, num_encoder_blocks=2, depths=[1, 1],
                                                   sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
                                                   strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2]))
_pixels("dpt", "vision", lambda: tf.DPTConfig(**{**VIT, "num_hidden_layers": 4}, backbone_out_indices=[0, 1, 2, 3],
                                              neck_hidden_sizes=[8, 16, 24, 32], fusion_hidden_size=16,
                                              reassemble_factors=[4, 2, 1, 0.5]),
        field="predicted_depth", auto=tf.AutoModelForDepthEstimation)
_pixels("efficientnet", "conv", lambda: tf.EfficientNetConfig(image_size=32, width_coefficient=0.25,
                                                              depth_coefficient=0.25, hidden_dim=320))
_pixels("regnet", "conv", lambda: tf.RegNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                                  groups_width=8))
_pixels("bit", "conv", lambda: tf.BitConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                            layer_type="preactivation", num_groups=4))
_pixels("mobilevit-v2", "conv", lambda: tf.MobileViTV2Config(image_size=64, width_multiplier=0.25), 64)
_pixels("swiftformer", "conv", lambda: tf.SwiftFormerConfig(depths=[1, 1, 1, 1], embed_dims=[8, 16, 24, 32]))


@register("perceiver", "encoder")
def perceiver():
    cfg = tf.PerceiverConfig(num_latents=8, d_latents=32, d_model=32, num_blocks=1, num_self_attends_per_block=2,
                             num_self_attention_heads=4, num_cross_attention_heads=4, qk_channels=32, v_channels=32)
    inputs = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(0))
    return MainOutput(tf.PerceiverModel(cfg).eval(), ["inputs"], "last_hidden_state"), (inputs,)


@register("blip2-qformer", "vision")
def blip2_qformer():
    cfg = tf.Blip2QFormerConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                encoder_hidden_size=32, vocab_size=VOCAB)
    g = torch.Generator().manual_seed(0)
    return (MainOutput(tf.Blip2QFormerModel(_eager(cfg)).eval(), ["query_embeds", "encoder_hidden_states"],
                       "last_hidden_state"), (torch.randn(1, 4, 32, generator=g), torch.randn(1, 6, 32, generator=g)))


@register("patchtst", "timeseries")
def patchtst():
    cfg = tf.PatchTSTConfig(num_input_channels=3, context_length=32, patch_length=8, patch_stride=8, d_model=32,
                            num_attention_heads=4, num_hidden_layers=2, ffn_dim=64, prediction_length=8)
    past = torch.randn(1, 32, 3, generator=torch.Generator().manual_seed(0))
    return MainOutput(tf.PatchTSTForPrediction(cfg).eval(), ["past_values"], "prediction_outputs"), (past,)


@register("time-series-transformer", "timeseries")
def time_series_transformer():
    cfg = tf.TimeSeriesTransformerConfig(prediction_length=4, context_length=8, lags_sequence=[1, 2], d_model=16,
                                         encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                         decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                                         num_time_features=1)
    g, n = torch.Generator().manual_seed(0), 10  # context 8 + the largest lag 2
    inputs = (torch.randn(1, n, generator=g), torch.randn(1, n, 1, generator=g), torch.ones(1, n),
              torch.randn(1, 4, 1, generator=g), torch.randn(1, 4, generator=g))
    names = ["past_values", "past_time_features", "past_observed_mask", "future_time_features", "future_values"]
    return MainOutput(tf.TimeSeriesTransformerModel(cfg).eval(), names, "last_hidden_state"), inputs
