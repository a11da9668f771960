//! A readable `Display` for tensors, in the style of PyTorch's printout.

use crate::Tensor;

/// Elements shown per dimension before eliding the middle with `...`.
const EDGE: usize = 3;

impl std::fmt::Display for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let values = self.to_f64_vec();
        let int = self.dtype().is_int();
        let fmt_one = |v: f64| if int { format!("{v}") } else { format!("{v:.4}") };
        fn rec(
            f: &mut std::fmt::Formatter<'_>,
            dims: &[usize],
            vals: &[f64],
            depth: usize,
            fmt_one: &dyn Fn(f64) -> String,
        ) -> std::fmt::Result {
            if dims.is_empty() {
                return f.write_str(&fmt_one(vals[0]));
            }
            let n = dims[0];
            let step = vals.len().checked_div(n).unwrap_or(0);
            f.write_str("[")?;
            let show: Vec<Option<usize>> = if n > 2 * EDGE {
                (0..EDGE)
                    .map(Some)
                    .chain([None])
                    .chain((n - EDGE..n).map(Some))
                    .collect()
            } else {
                (0..n).map(Some).collect()
            };
            for (j, i) in show.iter().enumerate() {
                if j > 0 {
                    if dims.len() > 1 {
                        write!(f, ",\n{}", " ".repeat(depth + 1))?;
                    } else {
                        f.write_str(", ")?;
                    }
                }
                match i {
                    Some(i) => rec(f, &dims[1..], &vals[i * step..(i + 1) * step], depth + 1, fmt_one)?,
                    None => f.write_str("...")?,
                }
            }
            f.write_str("]")
        }
        rec(f, self.dims(), &values, 0, &fmt_one)?;
        write!(
            f,
            "\nTensor[{:?}, {}, {}]",
            self.shape(),
            self.dtype(),
            self.device()
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::Tensor;

    #[test]
    fn display_shows_values_shape_and_dtype() {
        let t = Tensor::from_vec(vec![1f32, 2., 3., 4.], [2, 2]).unwrap();
        assert_eq!(
            t.to_string(),
            "[[1.0000, 2.0000],\n [3.0000, 4.0000]]\nTensor[[2, 2], f32, cpu]"
        );
        let long = Tensor::from_vec((0..10i64).collect::<Vec<_>>(), [10]).unwrap();
        assert!(long.to_string().starts_with("[0, 1, 2, ..., 7, 8, 9]"));
    }
}
