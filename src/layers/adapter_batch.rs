//! [`AdapterBatch`]: which adapter each row of a batch runs (PEFT's `adapter_names`), and the
//! grouped computation that serves many adapters in one forward.

use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use crate::error::{LoraError, Result};
use crate::layers::adapter::LoraAdapter;
use crate::layers::layer::LoraLayer;

/// The name that selects no adapter for a row: the bare base (PEFT's `"__base__"`).
pub const BASE_ADAPTER: &str = "__base__";

/// Which adapter each row of a batch runs, as PEFT's `adapter_names=[...]`: one name per row, or
/// [`BASE_ADAPTER`] for the base alone.
///
/// A layer given a batch computes its base once for every row, then, for each adapter, its two
/// skinny matmuls on that adapter's rows only (gathered, and added back in place), as Punica's
/// SGMV and S-LoRA do: the cost is the base plus `O(rows · r · (d_in + d_out))` per adapter,
/// never one full forward per adapter. A layer that does not hold an adapter named in the batch
/// runs the base for its rows (as PEFT does when an adapter targets fewer modules).
///
/// The selection ignores which adapters are active; it does need the layers enabled and
/// unmerged.
///
/// ```
/// use burn_lora::AdapterBatch;
///
/// let batch = AdapterBatch::new(&["task_a", "task_b", "__base__", "task_a"])?;
/// assert_eq!(batch.rows(), 4);
/// assert_eq!(batch.adapter_names(), vec!["task_a", "task_b"]);
/// assert_eq!(batch.row_adapter(2), None);
/// # Ok::<(), burn_lora::LoraError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterBatch {
    /// One entry per row: the adapter's index in `groups`, or `None` for the base.
    rows: Vec<Option<usize>>,
    /// Each adapter named, in order of first appearance, with its rows in increasing order.
    groups: Vec<(String, Vec<usize>)>,
}

impl AdapterBatch {
    /// One adapter name per row; [`BASE_ADAPTER`] for none.
    ///
    /// # Errors
    /// [`LoraError::InvalidInput`] for an empty batch, [`LoraError::InvalidAdapterName`] for an
    /// empty name.
    pub fn new<S: AsRef<str>>(names: &[S]) -> Result<Self> {
        if names.is_empty() {
            return Err(LoraError::InvalidInput(
                "an adapter batch needs at least one row".into(),
            ));
        }
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        let mut rows = Vec::with_capacity(names.len());
        for (row, name) in names.iter().enumerate() {
            let name = name.as_ref();
            if name.is_empty() {
                return Err(LoraError::InvalidAdapterName(name.to_string()));
            }
            if name == BASE_ADAPTER {
                rows.push(None);
                continue;
            }
            let group = match groups.iter().position(|(n, _)| n == name) {
                Some(group) => group,
                None => {
                    groups.push((name.to_string(), Vec::new()));
                    groups.len() - 1
                }
            };
            // `group` was found in `groups` or just pushed onto it.
            groups[group].1.push(row);
            rows.push(Some(group));
        }
        Ok(Self { rows, groups })
    }

    /// Every one of `rows` rows runs `name` (or the base, for [`BASE_ADAPTER`]).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn uniform(name: &str, rows: usize) -> Result<Self> {
        Self::new(&vec![name; rows])
    }

    /// The number of rows.
    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    /// The adapters the batch names (not [`BASE_ADAPTER`]), in order of first appearance.
    pub fn adapter_names(&self) -> Vec<&str> {
        self.groups.iter().map(|(name, _)| name.as_str()).collect()
    }

    /// The adapter of row `row`, `None` for the base (or a row past the end).
    pub fn row_adapter(&self, row: usize) -> Option<&str> {
        let group = (*self.rows.get(row)?)?;
        // `new` only stores indices of `groups` in `rows`.
        Some(self.groups[group].0.as_str())
    }

    /// Each adapter with the rows that run it, in increasing order.
    pub fn groups(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.groups
            .iter()
            .map(|(name, rows)| (name.as_str(), rows.as_slice()))
    }

    /// The batch restricted to `rows` (in that order): the rows still running in a generation.
    ///
    /// # Errors
    /// [`LoraError::InvalidInput`] when `rows` is empty or names a row past the end.
    pub fn select_rows(&self, rows: &[usize]) -> Result<Self> {
        let names = rows
            .iter()
            .map(|&row| {
                if row >= self.rows() {
                    return Err(LoraError::InvalidInput(format!(
                        "row {row} of an adapter batch of {} rows",
                        self.rows()
                    )));
                }
                Ok(self.row_adapter(row).unwrap_or(BASE_ADAPTER))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(&names)
    }

    /// [`LoraError::InvalidInput`] unless the input has one row per entry.
    pub(crate) fn check_rows(&self, rows: usize) -> Result<()> {
        if rows == self.rows() {
            Ok(())
        } else {
            Err(LoraError::InvalidInput(format!(
                "the adapter batch names {} rows, the input has {rows}",
                self.rows()
            )))
        }
    }
}

/// A layer's forward on `input` (`rows` rows) in which each row runs the adapter `batch` names
/// for it: `base(input)` once, then, for each adapter of `batch` that `layer` holds,
/// `update(adapter, rows of input, base)` added into those rows (dimension 0; `select` gathers
/// them), `base` being the base output of those rows for a DoRA adapter (which rescales it) and
/// `None` for others. Rows of adapters the layer lacks, and base rows, keep the base. A
/// disabled layer runs the base alone.
///
/// # Errors
/// [`LoraError::InvalidInput`] unless `rows` is the batch's, [`LoraError::Merged`] while merged.
pub(crate) fn forward_grouped<B, L, I, const D: usize>(
    layer: &L,
    batch: &AdapterBatch,
    rows: usize,
    input: I,
    base: impl FnOnce(I) -> Tensor<B, D>,
    select: impl Fn(I, Tensor<B, 1, Int>) -> I,
    update: impl Fn(&LoraAdapter<B>, I, Option<Tensor<B, D>>) -> Tensor<B, D>,
) -> Result<Tensor<B, D>>
where
    B: Backend,
    L: LoraLayer<B> + ?Sized,
    I: Clone,
{
    batch.check_rows(rows)?;
    if !layer.is_enabled() {
        return Ok(base(input));
    }
    if layer.is_merged() {
        return Err(LoraError::Merged(layer.merged_adapters().to_vec()));
    }
    let mut output = base(input.clone());
    let device = layer.device();
    // Each adapter's update on its own rows, then one scatter-add of them all into the output
    // (one pass over the output, however many adapters).
    let mut rows_updated: Vec<i64> = Vec::new();
    let mut deltas = Vec::new();
    for (name, group) in batch.groups() {
        let Some(adapter) = layer.adapter(name) else {
            continue;
        };
        if group.len() == rows {
            let base = adapter.is_dora().then(|| output.clone());
            return Ok(output + update(adapter, input, base));
        }
        let indices: Vec<i64> = group.iter().map(|&row| row as i64).collect();
        rows_updated.extend(&indices);
        let indices =
            Tensor::<B, 1, Int>::from_data(TensorData::new(indices, [group.len()]), &device);
        let base = adapter
            .is_dora()
            .then(|| output.clone().select(0, indices.clone()));
        deltas.push(update(adapter, select(input.clone(), indices), base));
    }
    if !deltas.is_empty() {
        let count = rows_updated.len();
        let indices =
            Tensor::<B, 1, Int>::from_data(TensorData::new(rows_updated, [count]), &device);
        let delta = if deltas.len() == 1 {
            deltas.remove(0)
        } else {
            Tensor::cat(deltas, 0)
        };
        output = output.select_assign(0, indices, delta, IndexingUpdateOp::Add);
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_grouped_by_adapter_in_order_of_first_appearance() {
        let batch = AdapterBatch::new(&["b", "__base__", "a", "b"]).unwrap();
        let groups: Vec<_> = batch.groups().collect();
        assert_eq!(groups, vec![("b", &[0, 3][..]), ("a", &[2][..])]);
        assert_eq!(batch.row_adapter(1), None);
        assert_eq!(batch.row_adapter(3), Some("b"));
        assert_eq!(batch.row_adapter(9), None);
    }

    #[test]
    fn empty_batches_and_names_are_errors() {
        assert!(matches!(
            AdapterBatch::new::<&str>(&[]),
            Err(LoraError::InvalidInput(_))
        ));
        assert!(matches!(
            AdapterBatch::new(&["a", ""]),
            Err(LoraError::InvalidAdapterName(_))
        ));
    }

    #[test]
    fn selected_rows_keep_their_adapters() {
        let batch = AdapterBatch::new(&["a", "b", "__base__"]).unwrap();
        let kept = batch.select_rows(&[2, 0]).unwrap();
        assert_eq!(kept, AdapterBatch::new(&["__base__", "a"]).unwrap());
        assert!(batch.select_rows(&[3]).is_err());
        assert!(batch.select_rows(&[]).is_err());
        assert!(batch.check_rows(2).is_err());
    }
}
