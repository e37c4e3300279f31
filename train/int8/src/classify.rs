//! From logits to a prediction: the softmax probabilities and the predicted label.

/// The engine's prediction for one clip ([`crate::Int8Model::classify`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Index of the predicted class: the largest logit (the first on ties).
    pub class: usize,
    /// Its label (the model file's label list).
    pub label: String,
    /// Softmax probabilities, in the model's label order.
    pub probs: Vec<f32>,
    /// Raw logits, in the model's label order.
    pub logits: Vec<f32>,
}

impl Prediction {
    /// The prediction for `logits` under the class names `labels` (logit order).
    pub fn from_logits(logits: Vec<f32>, labels: &[String]) -> Self {
        let class = argmax(&logits);
        Prediction {
            class,
            label: labels.get(class).cloned().unwrap_or_default(),
            probs: softmax(&logits),
            logits,
        }
    }
}

/// Softmax of logits (max-subtracted).
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits.iter().map(|&v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Index of the largest value (the first on ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_and_argmax_match_their_definitions() {
        let logits = [1.0f32, 3.0, -2.0, 3.0];
        let p = softmax(&logits);
        let z: f64 = logits.iter().map(|&v| (v as f64).exp()).sum();
        for (&pi, &l) in p.iter().zip(&logits) {
            assert!((pi as f64 - (l as f64).exp() / z).abs() < 1e-6);
        }
        assert_eq!(argmax(&logits), 1, "the first of two maxima");
        let labels: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let pred = Prediction::from_logits(logits.to_vec(), &labels);
        assert_eq!((pred.class, pred.label.as_str()), (1, "b"));
        // Large logits do not overflow.
        assert!(softmax(&[1000.0, 0.0])[0] > 0.999);
    }
}
