//! Checks of integer inputs (token ids, masks) on the host, before a model indexes with them.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use crate::error::{LoraError, Result};

/// The reads of [`host_ints`] since the test process started, over all threads (a forward
/// runs on the backend's compute threads, not the caller's): the tests that count them are the
/// crate's only unit tests that run a model's forward.
#[cfg(test)]
pub(crate) static DEVICE_READS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// An int tensor's values on the host, as `i64`: a read from the device, which waits for every
/// operation queued before it on a GPU backend.
pub(crate) fn host_ints<B: Backend, const D: usize>(
    tensor: &Tensor<B, D, Int>,
    what: &str,
) -> Result<Vec<i64>> {
    #[cfg(test)]
    DEVICE_READS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    tensor
        .clone()
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .map_err(|e| LoraError::InvalidInput(format!("reading the {what}: {e:?}")))
}

/// Every id is in `0..limit`; `what` names an id and `range` the range in the error
/// ("token id", "vocabulary").
pub(crate) fn check_ids<B: Backend>(
    ids: &Tensor<B, 2, Int>,
    limit: usize,
    what: &str,
    range: &str,
) -> Result<()> {
    let [_, seq] = ids.dims();
    let values = host_ints(ids, what)?;
    match values
        .iter()
        .position(|&id| id < 0 || id as u64 >= limit as u64)
    {
        Some(index) => Err(LoraError::InvalidInput(format!(
            "{what} {} at row {}, position {} is outside the {range} of {limit}",
            values.get(index).copied().unwrap_or_default(),
            index / seq.max(1),
            index % seq.max(1)
        ))),
        None => Ok(()),
    }
}

/// The mask on the host, checked to be `shape` and to hold only 0 and 1.
pub(crate) fn host_mask<B: Backend>(
    mask: &Tensor<B, 2, Int>,
    shape: [usize; 2],
) -> Result<Vec<i64>> {
    if mask.dims() != shape {
        return Err(LoraError::InvalidInput(format!(
            "attention mask of shape {:?} for input ids of shape {shape:?}",
            mask.dims()
        )));
    }
    let values = host_ints(mask, "attention mask")?;
    if let Some(value) = values.iter().find(|v| !matches!(v, 0 | 1)) {
        return Err(LoraError::InvalidInput(format!(
            "attention mask value {value} (only 0 and 1)"
        )));
    }
    Ok(values)
}
