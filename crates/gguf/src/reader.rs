//! A bounds-checked little-endian cursor over the file's bytes: every read either returns the
//! bytes it asked for or a [`GgufError::Truncated`] naming the field and the offset.

use crate::error::{GgufError, Result};

/// A read position in a byte slice.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

macro_rules! read_le {
    ($($name:ident -> $t:ty),* $(,)?) => {$(
        /// Reads one little-endian value.
        pub(crate) fn $name(&mut self, what: &str) -> Result<$t> {
            let b = self.take(std::mem::size_of::<$t>() as u64, what)?;
            let mut a = [0u8; std::mem::size_of::<$t>()];
            a.copy_from_slice(b);
            Ok(<$t>::from_le_bytes(a))
        }
    )*};
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// The current byte offset.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left after the cursor.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let available = self.remaining();
        let end = usize::try_from(n).ok().and_then(|n| self.pos.checked_add(n));
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(s) => {
                self.pos += s.len();
                Ok(s)
            }
            None => Err(GgufError::Truncated {
                what: what.to_string(),
                offset: self.pos,
                need: n,
                available,
            }),
        }
    }

    read_le!(u8 -> u8, i8 -> i8, u16 -> u16, i16 -> i16, u32 -> u32, i32 -> i32, u64 -> u64, i64 -> i64, f32 -> f32, f64 -> f64);

    /// A count (u64) of items that each take at least `min_item_bytes` bytes after it: an error
    /// unless the remaining bytes could hold them, so the count is safe to preallocate for.
    pub(crate) fn count(&mut self, min_item_bytes: u64, what: &str) -> Result<usize> {
        let offset = self.pos;
        let count = self.u64(what)?;
        let available = self.remaining();
        let min_bytes = count as u128 * min_item_bytes as u128;
        if min_bytes > available as u128 {
            return Err(GgufError::CountTooLarge {
                what: what.to_string(),
                offset,
                count,
                min_bytes,
                available,
            });
        }
        // `count <= available` when items take at least a byte; `min_item_bytes` is never 0.
        usize::try_from(count).map_err(|_| GgufError::CountTooLarge {
            what: what.to_string(),
            offset,
            count,
            min_bytes,
            available,
        })
    }

    /// A GGUF string: u64 byte length, then that many UTF-8 bytes.
    pub(crate) fn string(&mut self, what: &str) -> Result<String> {
        let offset = self.pos;
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(GgufError::InvalidUtf8 {
                what: what.to_string(),
                offset,
                lossy: String::from_utf8_lossy(bytes).into_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_and_stops_at_the_end() {
        let bytes = [1u8, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7];
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u32("a").unwrap(), 1);
        assert_eq!(r.u64("b").unwrap(), 2);
        assert_eq!(r.remaining(), 1);
        let err = r.u32("c").unwrap_err();
        assert!(
            matches!(
                err,
                GgufError::Truncated {
                    offset: 12,
                    need: 4,
                    available: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(r.u8("d").unwrap(), 7);
        assert!(r.take(u64::MAX, "e").is_err());
    }

    #[test]
    fn count_is_bounded_by_the_remaining_bytes() {
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend([0u8; 16]);
        let err = Reader::new(&bytes).count(8, "strings").unwrap_err();
        assert!(
            matches!(
                err,
                GgufError::CountTooLarge {
                    count: u64::MAX,
                    available: 16,
                    ..
                }
            ),
            "{err}"
        );
        let mut ok = 2u64.to_le_bytes().to_vec();
        ok.extend([0u8; 16]);
        assert_eq!(Reader::new(&ok).count(8, "strings").unwrap(), 2);
    }
}
