//! [`Record`]: how an element is written to and read from a cache file
//! ([`Pipeline::cache_file`](super::Pipeline::cache_file)).
//!
//! Numbers are little-endian, lengths `u64`, tensors an `.npy` image (dtype, shape, data).

use kiln_tensor::Tensor;

use crate::{Batch, Example, Result};

/// An element that can be stored in a cache file.
pub trait Record: Sized + Send + 'static {
    /// Append the encoding of `self` to `out`.
    fn encode(&self, out: &mut Vec<u8>) -> Result<()>;
    /// Decode one value from the front of `input`, advancing it; a message on malformed input.
    fn decode(input: &mut &[u8]) -> std::result::Result<Self, String>;
}

/// The first `n` bytes of `input`, advancing it.
fn take<'a>(input: &mut &'a [u8], n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
    if input.len() < n {
        return Err(format!("{what}: needs {n} bytes, {} left", input.len()));
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

macro_rules! number_record {
    ($($t:ty),*) => {$(
        impl Record for $t {
            fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
                out.extend_from_slice(&self.to_le_bytes());
                Ok(())
            }
            fn decode(input: &mut &[u8]) -> std::result::Result<Self, String> {
                let b = take(input, std::mem::size_of::<$t>(), stringify!($t))?;
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(b);
                Ok(<$t>::from_le_bytes(a))
            }
        }
    )*};
}

number_record!(u8, u16, u32, u64, i32, i64, f32, f64);

impl Record for usize {
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        (*self as u64).encode(out)
    }
    fn decode(input: &mut &[u8]) -> std::result::Result<Self, String> {
        usize::try_from(u64::decode(input)?).map_err(|e| format!("usize: {e}"))
    }
}

/// A length prefix.
fn decode_len(input: &mut &[u8]) -> std::result::Result<usize, String> {
    let n = u64::decode(input)?;
    let n = usize::try_from(n).map_err(|_| format!("length {n} does not fit in memory"))?;
    if n > input.len() {
        return Err(format!("length {n} exceeds the {} bytes left", input.len()));
    }
    Ok(n)
}

impl Record for String {
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        (self.len() as u64).encode(out)?;
        out.extend_from_slice(self.as_bytes());
        Ok(())
    }
    fn decode(input: &mut &[u8]) -> std::result::Result<Self, String> {
        let n = decode_len(input)?;
        let b = take(input, n, "string")?;
        String::from_utf8(b.to_vec()).map_err(|e| format!("string: {e}"))
    }
}

impl<T: Record> Record for Vec<T> {
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        (self.len() as u64).encode(out)?;
        self.iter().try_for_each(|x| x.encode(out))
    }
    fn decode(input: &mut &[u8]) -> std::result::Result<Self, String> {
        let n = u64::decode(input)?;
        // Every element takes at least a byte: a larger count is corrupt, not a reason to allocate.
        if n > input.len() as u64 {
            return Err(format!("vector of {n} elements in {} bytes", input.len()));
        }
        (0..n).map(|_| T::decode(input)).collect()
    }
}

impl<T: Record> Record for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            None => 0u8.encode(out),
            Some(x) => {
                1u8.encode(out)?;
                x.encode(out)
            }
        }
    }
    fn decode(input: &mut &[u8]) -> std::result::Result<Self, String> {
        match u8::decode(input)? {
            0 => Ok(None),
            1 => Ok(Some(T::decode(input)?)),
            t => Err(format!("option tag {t} (expected 0 or 1)")),
        }
    }
}

impl<A: Record, B: Record> Record for (A, B) {
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        self.0.encode(out)?;
        self.1.encode(out)
    }
    fn decode(input: &mut &[u8]) -> std::result::Result<Self, String> {
        Ok((A::decode(input)?, B::decode(input)?))
    }
}

impl<A: Record, B: Record, C: Record> Record for (A, B, C) {
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        self.0.encode(out)?;
        self.1.encode(out)?;
        self.2.encode(out)
    }
    fn decode(input: &mut &[u8]) -> std::result::Result<Self, String> {
        Ok((A::decode(input)?, B::decode(input)?, C::decode(input)?))
    }
}

impl Record for Tensor {
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        let npy = kiln_tensor::io::save_npy_to_bytes(self)?;
        (npy.len() as u64).encode(out)?;
        out.extend_from_slice(&npy);
        Ok(())
    }
    fn decode(input: &mut &[u8]) -> std::result::Result<Self, String> {
        let n = decode_len(input)?;
        let b = take(input, n, "tensor")?;
        kiln_tensor::io::load_npy_from_bytes(b).map_err(|e| format!("tensor: {e}"))
    }
}

impl Record for Example {
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        self.input.encode(out)?;
        self.target.encode(out)
    }
    fn decode(input: &mut &[u8]) -> std::result::Result<Self, String> {
        Ok(Example {
            input: Tensor::decode(input)?,
            target: Option::<Tensor>::decode(input)?,
        })
    }
}

impl Record for Batch {
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        self.inputs.encode(out)?;
        self.targets.encode(out)
    }
    fn decode(input: &mut &[u8]) -> std::result::Result<Self, String> {
        Ok(Batch {
            inputs: Tensor::decode(input)?,
            targets: Option::<Tensor>::decode(input)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Record>(x: &T) -> T {
        let mut out = Vec::new();
        x.encode(&mut out).unwrap();
        let mut input = out.as_slice();
        let y = T::decode(&mut input).unwrap();
        assert!(input.is_empty(), "{} bytes left over", input.len());
        y
    }

    #[test]
    fn values_round_trip() {
        assert_eq!(round_trip(&(7u8, -3i64)), (7, -3));
        assert_eq!(round_trip(&vec![1.5f32, -2.0]), vec![1.5, -2.0]);
        assert_eq!(
            round_trip(&("héllo".to_string(), Some(3usize), None::<u32>)).0,
            "héllo"
        );
        let t = Tensor::from_vec(vec![1u8, 2, 3, 4, 5, 6], [2, 3]).unwrap();
        let e = round_trip(&Example::new(t.t().unwrap(), Tensor::scalar(4i64)));
        assert_eq!(e.input.dims(), &[3, 2]);
        assert_eq!(e.input.to_vec::<u8>().unwrap(), vec![1, 4, 2, 5, 3, 6]);
        assert_eq!(e.target.unwrap().to_scalar::<i64>().unwrap(), 4);
    }

    #[test]
    fn malformed_input_is_a_message() {
        let mut input: &[u8] = &[1, 2, 3];
        assert!(u64::decode(&mut input).unwrap_err().contains("needs 8 bytes"));
        let mut input: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert!(Vec::<u8>::decode(&mut input).unwrap_err().contains("elements"));
        let mut input: &[u8] = &[2];
        assert!(Option::<u8>::decode(&mut input).unwrap_err().contains("tag 2"));
    }
}
