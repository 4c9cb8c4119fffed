//! sieve-predictor: predictors of which SwiGLU neurons will matter, per layer, from a tapped
//! activation. Families (low-rank classifier, low-rank gate regression, low-bit gate copy),
//! their fitting and training, decision rules chosen on validation data, recall / precision
//! metrics and predictivity curves, and the on-disk format (safetensors + JSON).
//! Knows nothing of the engine: it sees inputs, labels and W_gate as plain arrays.

pub mod error;
pub mod grid;
pub mod labels;
pub mod model;
pub mod pca;
pub mod rule;
pub mod store;
pub mod train;

pub use error::{PredictorError, Result};
pub use labels::Labels;
pub use model::{Body, Family, LayerPredictor, Output};
pub use rule::{Quality, Rule};
pub use store::{Manifest, PredictorSet};
