use std::path::Path;

use kiln::data::mnist::{decode_idx_images, decode_idx_labels};

/// The IDX image and label readers (gzip-compressed or not); accepted images hold exactly the
/// pixels their dimensions announce.
pub fn idx(data: &[u8]) {
    let origin = Path::new("fuzz-idx3-ubyte.gz");
    if let Ok((pixels, [n, rows, cols])) = decode_idx_images(data.to_vec(), origin) {
        assert_eq!(
            Some(pixels.len()),
            n.checked_mul(rows).and_then(|x| x.checked_mul(cols))
        );
    }
    let _ = decode_idx_labels(data.to_vec(), origin);
}
