//! Test-set evaluation: accuracy and wrong count per digit, printed side by side.

use burn::tensor::backend::Backend;
use burn_lora::LoraMlp;
use burn_lora_support::mnist::MnistSplit;

/// Accuracy and the wrong count of each digit on a split.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    /// Correct / total.
    pub accuracy: f64,
    /// Misclassified images per true digit.
    pub wrong: [usize; 10],
    /// Images per true digit.
    pub totals: [usize; 10],
}

/// Classifies the whole split with Burn's data loader, in batches of 1000.
pub fn evaluate<B: Backend>(model: &LoraMlp<B>, split: &MnistSplit) -> EvalReport {
    let device = model.layers()[0].weight().device();
    let mut wrong = [0usize; 10];
    let totals = split.label_counts();
    let loader = super::learner::eval_loader::<B>(split).to_device(&device);
    for batch in loader.iter() {
        let predicted = model.forward(batch.images).argmax(1).into_data();
        let labels = batch.targets.into_data();
        for (guess, label) in predicted.iter::<i64>().zip(labels.iter::<i64>()) {
            if guess != label {
                wrong[label as usize] += 1;
            }
        }
    }
    let errors: usize = wrong.iter().sum();
    EvalReport {
        accuracy: 1.0 - errors as f64 / split.len().max(1) as f64,
        wrong,
        totals,
    }
}

/// A table with one column per named report: accuracy, then the wrong count of each digit.
pub fn table(columns: &[(&str, &EvalReport)]) -> String {
    let mut out = format!("{:<10}", "");
    for (name, _) in columns {
        out += &format!("{name:>16}");
    }
    out += &format!("\n{:<10}", "accuracy");
    for (_, report) in columns {
        out += &format!("{:>16.4}", report.accuracy);
    }
    for digit in 0..10 {
        out += &format!("\n{:<10}", format!("wrong {digit}"));
        for (_, report) in columns {
            out += &format!("{:>16}", report.wrong[digit]);
        }
    }
    out
}
