//! [`MnistSplit`]: one split's pixels and labels in memory, batched into normalised tensors.

use std::fmt;

use super::idx::{self, invalid, IdxKind};
use super::PIXELS;
use crate::error::Result;

/// Mean of the MNIST training pixels on the `[0, 1]` scale (torchvision's `Normalize` constant).
pub const MNIST_MEAN: f32 = 0.1307;

/// Standard deviation of the MNIST training pixels on the `[0, 1]` scale.
pub const MNIST_STD: f32 = 0.3081;

/// Normalises a raw pixel as the notebook does: `(pixel / 255 - 0.1307) / 0.3081`, in `f32`.
pub fn normalize(pixel: u8) -> f32 {
    (f32::from(pixel) / 255.0 - MNIST_MEAN) / MNIST_STD
}

/// One split of MNIST: `len()` images of 28 × 28 raw bytes, row-major, and their labels 0–9.
///
/// Built by [`MnistLoader`](super::MnistLoader), from IDX bytes ([`Self::from_idx_bytes`]) or
/// from raw pixels ([`Self::new`]); the invariants (784 pixels per label, labels ≤ 9) always
/// hold.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct MnistSplit {
    images: Vec<u8>,
    labels: Vec<u8>,
}

impl MnistSplit {
    /// A split from raw pixels (`labels.len() * 784` bytes, image after image) and labels.
    ///
    /// Errors with [`DataError::InvalidData`](crate::DataError::InvalidData) when the lengths
    /// disagree or a label is above 9.
    pub fn new(images: Vec<u8>, labels: Vec<u8>) -> Result<Self> {
        const WHAT: &str = "MnistSplit::new";
        if !images.len().is_multiple_of(PIXELS) || images.len() / PIXELS != labels.len() {
            return Err(invalid(
                WHAT,
                format!(
                    "{} pixel bytes do not make {} images of {PIXELS} pixels",
                    images.len(),
                    labels.len()
                ),
            ));
        }
        if let Some((index, label)) = labels.iter().enumerate().find(|(_, &label)| label > 9) {
            return Err(invalid(
                WHAT,
                format!("label {label} at index {index} is not a digit 0-9"),
            ));
        }
        Ok(Self { images, labels })
    }

    /// A split from the bytes of an images and a labels IDX file, each plain or gzipped.
    ///
    /// The same checks as for files on disk; errors name `<images bytes>` or `<labels bytes>`.
    ///
    /// ```
    /// use burn_lora_support::mnist::MnistSplit;
    ///
    /// // Two blank 28x28 images labelled 3 and 7, as IDX files.
    /// let mut images = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28];
    /// images.resize(16 + 2 * 784, 0);
    /// let labels = [0, 0, 8, 1, 0, 0, 0, 2, 3, 7];
    ///
    /// let split = MnistSplit::from_idx_bytes(&images, &labels)?;
    /// assert_eq!(split.len(), 2);
    /// assert_eq!(split.labels(), &[3, 7]);
    /// # Ok::<(), burn_lora_support::DataError>(())
    /// ```
    pub fn from_idx_bytes(images: &[u8], labels: &[u8]) -> Result<Self> {
        let images_name = "<images bytes>";
        let labels_name = "<labels bytes>";
        let pixels = idx::parse(images, IdxKind::Images, images_name, false)?;
        let labels = idx::parse(labels, IdxKind::Labels, labels_name, false)?;
        Self::from_checked(pixels, images_name, labels, labels_name)
    }

    /// Pairs the validated payloads of an images and a labels file; their counts must agree.
    pub(crate) fn from_checked(
        images: Vec<u8>,
        images_name: &str,
        labels: Vec<u8>,
        labels_name: &str,
    ) -> Result<Self> {
        let image_count = images.len() / PIXELS;
        if image_count != labels.len() {
            return Err(invalid(
                labels_name,
                format!(
                    "holds {} labels but {images_name} holds {image_count} images: the counts \
                     must be equal",
                    labels.len()
                ),
            ));
        }
        Ok(Self { images, labels })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// All labels, one per image, each 0–9.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// All raw pixels: `len() * 784` bytes, image after image, each row-major.
    pub fn images(&self) -> &[u8] {
        &self.images
    }

    /// The 784 raw pixels of image `index`, or `None` past the end.
    pub fn image(&self, index: usize) -> Option<&[u8]> {
        let start = index.checked_mul(PIXELS)?;
        self.images.get(start..start.checked_add(PIXELS)?)
    }

    /// How many images carry each digit: `counts[d]` for `d` in 0–9.
    pub fn label_counts(&self) -> [usize; 10] {
        let mut counts = [0; 10];
        for &label in &self.labels {
            if let Some(count) = counts.get_mut(usize::from(label)) {
                *count += 1;
            }
        }
        counts
    }

    /// The images labelled `digit`, in their original order (empty for `digit` > 9).
    pub fn only_digit(&self, digit: u8) -> Self {
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for (pixels, &label) in self.images.chunks_exact(PIXELS).zip(&self.labels) {
            if label == digit {
                images.extend_from_slice(pixels);
                labels.push(label);
            }
        }
        Self { images, labels }
    }
}

impl fmt::Debug for MnistSplit {
    /// A summary: the count and the per-digit counts, not the pixels.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MnistSplit")
            .field("len", &self.len())
            .field("label_counts", &self.label_counts())
            .finish()
    }
}
