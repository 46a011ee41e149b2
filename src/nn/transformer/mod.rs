//! Transformer blocks with LoRA-ready linear layers: the mirror of `burn::nn::transformer`
//! (the encoder side).

mod cache;
mod encoder;
mod layer;
mod pwff;

pub use cache::{
    TransformerEncoderAutoregressiveCache, TransformerEncoderLayerAutoregressiveCache,
};
pub use encoder::{TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput};
pub use layer::TransformerEncoderLayer;
pub use pwff::{PositionWiseFeedForward, PositionWiseFeedForwardConfig};
