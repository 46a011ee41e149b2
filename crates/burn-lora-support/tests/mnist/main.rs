//! The MNIST IDX reader: parsing, search order, batching and malformed files (`mnist_loader`),
//! and fuzzing it (`mnist_fuzz`). One test binary, one module per file (a binary links all of
//! Burn).

mod mnist_fuzz;
mod mnist_loader;
