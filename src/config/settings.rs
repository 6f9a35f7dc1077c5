//! Reading typed settings from variables, collecting every problem with the variable's name,
//! the value given and the form expected.

use std::{
    collections::HashMap,
    net::{SocketAddr, ToSocketAddrs},
    path::PathBuf,
    str::FromStr,
};

/// Variables by name; problems found so far.
pub struct Reader {
    vars: HashMap<String, String>,
    problems: Vec<String>,
}

impl Reader {
    pub fn new(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        Reader {
            vars: vars.into_iter().collect(),
            problems: vec![],
        }
    }

    /// The variable's value, trimmed; `None` when unset or blank.
    pub fn string(&self, name: &str) -> Option<String> {
        self.vars
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }

    /// The variable's value exactly as set (a password may begin or end with a space);
    /// `None` when unset or empty.
    pub fn secret(&self, name: &str) -> Option<String> {
        self.vars.get(name).filter(|v| !v.is_empty()).cloned()
    }

    pub fn path(&self, name: &str, default: &str) -> PathBuf {
        PathBuf::from(self.string(name).unwrap_or_else(|| default.into()))
    }

    /// The path variable `name`, or `leaf` under `dir` when unset.
    pub fn path_under(&self, name: &str, dir: &std::path::Path, leaf: &str) -> PathBuf {
        self.string(name)
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.join(leaf))
    }

    /// The variable parsed by `parse` (whose error is the form expected), or `default` when
    /// unset. A bad value is recorded as a problem.
    pub fn get<T>(
        &mut self,
        name: &str,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> T {
        self.opt(name, parse).unwrap_or(default)
    }

    /// Like `get`, without a default.
    pub fn opt<T>(&mut self, name: &str, parse: impl Fn(&str) -> Result<T, String>) -> Option<T> {
        let value = self.string(name)?;
        match parse(&value) {
            Ok(v) => Some(v),
            Err(expected) => {
                // A URL's userinfo may be a password: never echoed.
                let shown = match value.split_once("://") {
                    Some((scheme, rest)) if rest.split('/').next().unwrap_or("").contains('@') => {
                        let after = rest.split_once('@').map_or("", |(_, a)| a);
                        format!("{scheme}://***@{after}")
                    }
                    _ => value.clone(),
                };
                self.problems.push(format!(
                    "{name}={shown:?} is not valid: expected {expected}"
                ));
                None
            }
        }
    }

    /// Records a problem found across settings.
    pub fn problem(&mut self, text: &str) {
        self.problems.push(text.to_string());
    }

    /// Every problem, or none.
    pub fn finish(self) -> Result<(), super::ConfigError> {
        match self.problems.is_empty() {
            true => Ok(()),
            false => Err(super::ConfigError::Invalid(self.problems)),
        }
    }
}

/// A whole number.
pub fn number<T: FromStr>(v: &str) -> Result<T, String> {
    v.replace('_', "")
        .parse()
        .map_err(|_| "a whole number (e.g. 4)".into())
}

/// A whole number from `lo` to `hi`.
pub fn number_in<T>(lo: T, hi: T) -> impl Fn(&str) -> Result<T, String>
where
    T: FromStr + PartialOrd + std::fmt::Display + Copy,
{
    move |v| {
        let n: T = number(v).map_err(|_| format!("a whole number from {lo} to {hi}"))?;
        if n < lo || n > hi {
            return Err(format!("a whole number from {lo} to {hi}"));
        }
        Ok(n)
    }
}

/// A byte count no larger than `hi` (see `bytes`).
pub fn bytes_up_to(hi: u64) -> impl Fn(&str) -> Result<u64, String> {
    move |v| match bytes(v)? {
        n if n > hi => Err(format!("a size of at most {hi} bytes ({} GiB)", hi >> 30)),
        n => Ok(n),
    }
}

/// A byte count: a plain number of bytes, or a number with a unit (`8MiB`, `500GiB`, `5MB`,
/// `1.5 GiB`; binary units are powers of 1024, decimal ones of 1000), parsed by `bytesize`.
pub fn bytes(v: &str) -> Result<u64, String> {
    const FORM: &str = "a size in bytes, with an optional unit (e.g. 8MiB, 500GiB, 1048576)";
    if let Ok(n) = v.replace('_', "").parse::<u64>() {
        return Ok(n);
    }
    v.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| FORM.into())
}

/// A duration in whole seconds: a plain number of seconds, or a number with units (`30s`,
/// `24h`, `1h 30m`), parsed by `humantime`; a fraction of a second rounds up.
pub fn secs(v: &str) -> Result<u64, String> {
    const FORM: &str = "a duration, a number of seconds or with units (e.g. 30s, 15m, 24h)";
    let n = match v.replace('_', "").parse::<u64>() {
        Ok(n) => n,
        Err(_) => {
            // Units in any case (`30S`, `24H`); humantime's are lower case.
            let d =
                humantime::parse_duration(&v.to_ascii_lowercase()).map_err(|_| FORM.to_string())?;
            d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
        }
    };
    // A clock reading plus a longer time overflows (a panic at the first connection).
    if n > MAX_SECS {
        return Err(format!("a duration of at most {MAX_SECS} s (100 years)"));
    }
    Ok(n)
}

/// The longest duration a setting takes: 100 years (seconds), far below what a clock reading
/// plus it could overflow.
pub const MAX_SECS: u64 = 100 * 365 * 24 * 3600;

/// A duration (see `secs`) of at least `lo` seconds: a time limit for which 0 (or less than
/// `lo`) would make no sense, refused rather than silently raised.
pub fn secs_from(lo: u64) -> impl Fn(&str) -> Result<u64, String> {
    move |v| match secs(v)? {
        n if n < lo => Err(format!(
            "a duration of at least {lo} s (e.g. 30s, 15m, 24h)"
        )),
        n => Ok(n),
    }
}

/// An `http://` or `https://` URL with a host.
pub fn http_url(v: &str) -> Result<String, String> {
    const FORM: &str = "an http:// or https:// URL (e.g. http://127.0.0.1:3900)";
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
        .ok_or(FORM)?;
    match rest.split(['/', '?']).next() {
        // Credentials in the URL would be printed wherever the URL is (the start-up summary).
        Some(host) if host.contains('@') => Err(format!(
            "{FORM}, without a user or password in it (S3 credentials go in \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )),
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => Ok(v.to_string()),
        _ => Err(FORM.into()),
    }
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`), any case.
pub fn boolean(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("true or false".into()),
    }
}

/// One of `options` (by name, any case).
pub fn choice<'a, T: Copy>(
    options: &'a [(&'static str, T)],
) -> impl Fn(&str) -> Result<T, String> + 'a {
    move |v| {
        options
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(v))
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                format!("one of {}", names.join(", "))
            })
    }
}

/// `HOST:PORT`, the host an address or a name (`localhost:9500`, `0.0.0.0:9500`,
/// `[::]:9500`); a name is resolved now, and its first address is used.
pub fn socket_addr(v: &str) -> Result<SocketAddr, String> {
    const FORM: &str = "HOST:PORT (e.g. 0.0.0.0:9500, localhost:9500, [::]:9500)";
    if let Ok(a) = v.parse() {
        return Ok(a);
    }
    let (host, port) = v.rsplit_once(':').ok_or(FORM)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(FORM.into());
    }
    v.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("{FORM}; the host {host:?} does not resolve"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_units_and_plain_numbers() {
        assert_eq!(bytes("1048576"), Ok(1 << 20));
        assert_eq!(bytes("8MiB"), Ok(8 << 20));
        assert_eq!(bytes("8 MiB"), Ok(8 << 20));
        assert_eq!(bytes("500GiB"), Ok(500 << 30));
        assert_eq!(bytes("5MB"), Ok(5_000_000));
        assert!(bytes("lots").is_err());
        assert!(bytes("-1").is_err());
    }

    #[test]
    fn durations_take_units_and_plain_numbers() {
        assert_eq!(secs("30"), Ok(30));
        assert_eq!(secs("30s"), Ok(30));
        assert_eq!(secs("15m"), Ok(900));
        assert_eq!(secs("24h"), Ok(86_400));
        assert_eq!(secs("1h 30m"), Ok(5400));
        assert_eq!(secs("1500ms"), Ok(2));
        assert_eq!(secs("30S"), Ok(30));
        assert!(secs("soon").is_err());
        // A clock reading plus these overflowed at the first connection or at SIGTERM.
        for huge in ["9223372036854775807", "18446744073709551615", "200years"] {
            assert!(secs(huge).unwrap_err().contains("at most"), "{huge}");
        }
        assert_eq!(secs(&MAX_SECS.to_string()), Ok(MAX_SECS));
        assert_eq!(secs_from(1)("30s"), Ok(30));
        assert_eq!(
            secs_from(3)("2"),
            Err("a duration of at least 3 s (e.g. 30s, 15m, 24h)".into())
        );
    }

    #[test]
    fn ranges_are_enforced_and_named() {
        let f = number_in::<usize>(1, 100_000);
        assert_eq!(f("64"), Ok(64));
        assert_eq!(f("0"), Err("a whole number from 1 to 100000".into()));
        assert!(f("18446744073709551615").is_err());
        assert!(f("-1").is_err());
        assert!(bytes_up_to(5 << 30)("10GiB").is_err());
        assert_eq!(bytes_up_to(5 << 30)("5GiB"), Ok(5 << 30));
    }

    #[test]
    fn choices_ignore_case_and_name_the_options() {
        let f = choice(&[("local", 1), ("s3", 2)]);
        assert_eq!(f("S3"), Ok(2));
        assert_eq!(f("Local"), Ok(1));
        assert_eq!(f("s4"), Err("one of local, s3".into()));
    }

    #[test]
    fn addresses_take_names() {
        assert_eq!(socket_addr("0.0.0.0:9500").unwrap().port(), 9500);
        let a = socket_addr("localhost:9500").unwrap();
        assert!(a.ip().is_loopback() && a.port() == 9500, "{a}");
        assert!(socket_addr("garbage").is_err());
        assert!(socket_addr("host:notaport").is_err());
    }

    #[test]
    fn every_problem_is_named() {
        let mut r = Reader::new([
            ("FS_STORAGE".to_string(), "s4".to_string()),
            ("FS_LISTEN".into(), "garbage".into()),
        ]);
        r.get("FS_STORAGE", 0, choice(&[("local", 0), ("s3", 1)]));
        r.get("FS_LISTEN", default(), socket_addr);
        let err = r.finish().unwrap_err().to_string();
        assert!(
            err.contains("FS_STORAGE=\"s4\" is not valid: expected one of local, s3"),
            "{err}"
        );
        assert!(
            err.contains("FS_LISTEN=\"garbage\" is not valid: expected HOST:PORT"),
            "{err}"
        );
    }

    fn default() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 1))
    }
}
