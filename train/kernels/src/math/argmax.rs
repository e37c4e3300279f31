//! The predicted class: the index of the largest value.

/// Index of the largest value of `v`, the first one on ties; 0 for an empty slice. A NaN is
/// never larger than another value, so it is chosen only at index 0 (callers check logits for
/// NaN before they take a prediction).
///
/// The toolkit's one definition of "prediction = arg-max of the logits": the metrics, the
/// trainer's running accuracy, the floor, the teacher fusion and the int8 engine all use it.
pub fn argmax<T: PartialOrd>(v: &[T]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_of_equal_maxima_and_empty() {
        assert_eq!(
            argmax(&[0.5f32, 2.0, -1.0, 2.0]),
            1,
            "the first of two maxima"
        );
        assert_eq!(argmax(&[-3.0f64, -1.0, -2.0]), 1);
        assert_eq!(argmax::<f32>(&[]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax(&[1u8, 7, 7]), 1);
    }
}
