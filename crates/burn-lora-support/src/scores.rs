//! Classification scores over a whole evaluation set: accuracy and macro-averaged F1.

/// Accuracy and macro-F1 of predicted classes against true ones.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClassificationScores {
    /// Fraction predicted right.
    pub accuracy: f64,
    /// Mean over the classes of `2·precision·recall / (precision + recall)`, a class with no
    /// true and no predicted example left out and an undefined F1 counted as 0
    /// (scikit-learn's `f1_score(average="macro")` over the classes present).
    pub macro_f1: f64,
}

impl ClassificationScores {
    /// Scores `predicted` against `actual` (same length, classes below `num_classes`).
    ///
    /// # Panics
    /// If the lengths differ or a class is `num_classes` or more: both are the caller's bug.
    pub fn new(predicted: &[usize], actual: &[usize], num_classes: usize) -> Self {
        assert_eq!(predicted.len(), actual.len(), "one prediction per example");
        let (mut tp, mut predicted_n, mut actual_n) = (
            vec![0usize; num_classes],
            vec![0usize; num_classes],
            vec![0usize; num_classes],
        );
        for (&p, &a) in predicted.iter().zip(actual) {
            predicted_n[p] += 1;
            actual_n[a] += 1;
            if p == a {
                tp[p] += 1;
            }
        }
        let correct: usize = tp.iter().sum();
        let present: Vec<usize> = (0..num_classes)
            .filter(|&c| predicted_n[c] + actual_n[c] > 0)
            .collect();
        let f1_sum: f64 = present
            .iter()
            .map(|&c| 2.0 * tp[c] as f64 / (predicted_n[c] + actual_n[c]) as f64)
            .sum();
        Self {
            accuracy: correct as f64 / predicted.len().max(1) as f64,
            macro_f1: f1_sum / present.len().max(1) as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_and_macro_f1_match_a_hand_computed_case() {
        // class 0: tp 2, fp 1, fn 0 → F1 0.8; class 1: tp 1, fp 1, fn 1 → F1 0.5;
        // class 2: tp 0, fp 0, fn 1 → F1 0; class 3 absent everywhere → left out.
        let scores = ClassificationScores::new(&[0, 0, 1, 0, 1], &[0, 0, 1, 1, 2], 4);
        assert_eq!(scores.accuracy, 0.6);
        assert!((scores.macro_f1 - (0.8 + 0.5 + 0.0) / 3.0).abs() < 1e-12);
    }
}
