//! Sizes and rates with units on the command line (`50MiB`, `10MB`, `1048576`), parsed with
//! `bytesize` (the parser the service uses for its own settings).

/// Parses a size in bytes: a plain number, or a number with a unit (`KiB`, `MiB`, `GiB`, `KB`,
/// `MB`, ...; binary and decimal as written). Zero is refused: every size here must be positive.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let trimmed = s.trim();
    let bytes = trimmed
        .parse::<bytesize::ByteSize>()
        .map_err(|_| format!("{s:?} is not a size: expected bytes with an optional unit, e.g. 50MiB, 512KiB, 1048576"))?
        .as_u64();
    if bytes == 0 {
        return Err(format!("{s:?} is zero: expected a positive size"));
    }
    Ok(bytes)
}

/// Largest `--chunk-size`: each chunk in flight is one buffer of this size in memory.
pub const MAX_CHUNK_SIZE: u64 = 1 << 30;

/// Parses a chunk size: a size (see [`parse_size`]) of at most [`MAX_CHUNK_SIZE`].
pub fn parse_chunk_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n > MAX_CHUNK_SIZE {
        return Err(format!(
            "{s:?} is larger than a chunk may be (1 GiB): each chunk in flight is held in memory"
        ));
    }
    Ok(n)
}

/// Parses a rate in bytes per second, like curl's `--limit-rate`: `10MiB` is 10 MiB/s. An
/// optional `/s` suffix is accepted (`10MiB/s`).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    parse_size(t)
}

/// Parses the number of chunks in flight (1..=64).
pub fn parse_parallel(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a number of chunks in flight: expected 1 to 64"
        )),
    }
}

/// Formats bytes for people (`1.5 GiB`).
pub fn human(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_size("50MiB").unwrap(), 50 << 20);
        assert_eq!(parse_size("1 MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("512KiB").unwrap(), 512 << 10);
    }

    #[test]
    fn bad_sizes_are_refused_not_panics() {
        for bad in ["", "lots", "-5", "0", "0MiB", "5XB", "1.5.5MiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn chunk_sizes_are_bounded() {
        assert_eq!(parse_chunk_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_chunk_size("2GiB").is_err());
        assert!(parse_chunk_size("100TiB").is_err());
    }

    #[test]
    fn rates_take_an_optional_per_second() {
        assert_eq!(parse_rate("10MiB").unwrap(), 10 << 20);
        assert_eq!(parse_rate("10MiB/s").unwrap(), 10 << 20);
        assert_eq!(parse_rate("100000").unwrap(), 100_000);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
    }

    #[test]
    fn parallel_is_bounded() {
        assert_eq!(parse_parallel("4").unwrap(), 4);
        assert!(parse_parallel("0").is_err());
        assert!(parse_parallel("65").is_err());
        assert!(parse_parallel("x").is_err());
    }
}
