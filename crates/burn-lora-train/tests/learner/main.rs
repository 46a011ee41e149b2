//! Training with burn-lora-train: the seeded epoch order of `EpochDataLoader` (`epoch_loader`)
//! and LoRA training through burn-train's `Learner` (`learner`). One test binary, one module per
//! file (a binary links all of Burn).

mod epoch_loader;
mod learner;
