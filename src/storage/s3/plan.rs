//! Which multipart parts an upload's chunks become at completion, on a store whose non-final
//! parts must be at least a minimum size. Pure: no store is touched here.
//!
//! Chunk n went to the store either as part n itself (direct) or as a staging object (staged).
//! A direct part cannot be read back before completion (no `UploadPartCopy` from an incomplete
//! upload), so direct parts stay as they are and only the runs of staged chunks between them
//! are regrouped:
//!
//! - a staged chunk of at least the minimum is a part alone, copied inside the store;
//! - consecutive smaller ones are grouped until the group reaches the minimum;
//! - a smaller group left over joins the run's previous part, or else its next one, unless it
//!   ends the object (the last part may be small);
//! - a run below the minimum that a direct part follows cannot be joined: that direct chunk
//!   must be sent again (it is then staged, and the run grows).
//!
//! A group is numbered by its first chunk, so part numbers stay ascending and never collide.

/// How a chunk is held before completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// A staging object.
    Staged,
    /// Multipart part of its own number, with this ETag.
    Direct { etag: String },
}

/// A received chunk, in the order of the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub number: u32,
    pub len: u64,
    pub held: Held,
}

/// What makes one multipart part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The direct part, as it is.
    Keep { etag: String },
    /// One staged chunk, copied inside the store (`UploadPartCopy`).
    Copy,
    /// These staged chunks (consecutive, in order), streamed into one part.
    Upload { chunks: Vec<u32> },
}

/// One part of the completed upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub number: u32,
    pub len: u64,
    pub source: Source,
}

/// No valid part list exists: these direct chunks must be sent again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Infeasible {
    pub resend: Vec<u32>,
}

/// The parts, in ascending part number, that `chunks` (in order) complete into; every part but
/// the last is at least `min` bytes.
pub fn plan(chunks: &[Chunk], min: u64) -> Result<Vec<Part>, Infeasible> {
    let mut parts = vec![];
    let mut resend = vec![];
    let mut i = 0;
    while i < chunks.len() {
        if let Held::Direct { etag } = &chunks[i].held {
            parts.push(Part {
                number: chunks[i].number,
                len: chunks[i].len,
                source: Source::Keep { etag: etag.clone() },
            });
            i += 1;
            continue;
        }
        let end = (i..chunks.len())
            .find(|&j| chunks[j].held != Held::Staged)
            .unwrap_or(chunks.len());
        match plan_run(&chunks[i..end], min, end == chunks.len()) {
            Some(groups) => parts.extend(groups.into_iter().map(|g| to_part(g, min))),
            None => resend.push(chunks[end].number),
        }
        i = end;
    }
    if resend.is_empty() {
        Ok(parts)
    } else {
        Err(Infeasible { resend })
    }
}

/// Groups one run of staged chunks; `None` when it is below `min` and not the object's end.
fn plan_run(run: &[Chunk], min: u64, at_end: bool) -> Option<Vec<Vec<&Chunk>>> {
    let total = |g: &[&Chunk]| g.iter().map(|c| c.len).sum::<u64>();
    let mut groups: Vec<Vec<&Chunk>> = vec![];
    let mut pending: Vec<&Chunk> = vec![];
    for c in run {
        if c.len >= min {
            if pending.is_empty() {
                groups.push(vec![c]);
            } else if let Some(prev) = groups.last_mut() {
                prev.append(&mut pending);
                groups.push(vec![c]);
            } else {
                pending.push(c);
                groups.push(std::mem::take(&mut pending));
            }
            continue;
        }
        pending.push(c);
        if total(&pending) >= min {
            groups.push(std::mem::take(&mut pending));
        }
    }
    if !pending.is_empty() {
        match groups.last_mut() {
            _ if at_end => groups.push(pending),
            Some(prev) => prev.append(&mut pending),
            None => return None,
        }
    }
    Some(groups)
}

fn to_part(group: Vec<&Chunk>, min: u64) -> Part {
    let len = group.iter().map(|c| c.len).sum();
    let number = group[0].number;
    let source = if group.len() == 1 && len >= min {
        Source::Copy
    } else {
        Source::Upload {
            chunks: group.iter().map(|c| c.number).collect(),
        }
    };
    Part {
        number,
        len,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 5;

    /// "4s 4s 6d": chunks 1.. of these sizes, staged or direct.
    fn chunks(spec: &str) -> Vec<Chunk> {
        spec.split_whitespace()
            .enumerate()
            .map(|(i, w)| {
                let (len, kind) = w.split_at(w.len() - 1);
                let number = i as u32 + 1;
                Chunk {
                    number,
                    len: len.parse().unwrap(),
                    held: match kind {
                        "s" => Held::Staged,
                        "d" => Held::Direct {
                            etag: format!("e{number}"),
                        },
                        other => panic!("kind {other}"),
                    },
                }
            })
            .collect()
    }

    /// "K3" keep part 3, "C3" copy chunk 3, "U1-2" upload chunks 1..2 as part 1.
    fn show(plan: &Result<Vec<Part>, Infeasible>) -> String {
        match plan {
            Err(e) => format!("resend {:?}", e.resend),
            Ok(parts) => parts
                .iter()
                .map(|p| match &p.source {
                    Source::Keep { .. } => format!("K{}", p.number),
                    Source::Copy => format!("C{}", p.number),
                    Source::Upload { chunks } => {
                        format!("U{}-{}", chunks[0], chunks[chunks.len() - 1])
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    #[test]
    fn plans() {
        let table = [
            ("6d", "K1"),
            ("1s", "U1-1"),
            ("6s", "C1"),
            ("6d 6d 6d", "K1 K2 K3"),
            ("6d 6d 1s", "K1 K2 U3-3"),
            ("1s 1s 1s", "U1-3"),
            ("4s 4s 6d", "U1-2 K3"),
            ("4s 4s 6s", "U1-2 C3"),
            ("5s 5s 5s", "C1 C2 C3"),
            ("6s 1s 6s", "U1-2 C3"),
            ("1s 6s 6s", "U1-2 C3"),
            ("6s 6s 1s", "C1 C2 U3-3"),
            ("6s 1s", "C1 U2-2"),
            ("6s 1s 1s 6d", "U1-3 K4"),
            ("6d 1s 6s", "K1 U2-3"),
            ("4s 1s 6d 2s", "U1-2 K3 U4-4"),
            ("2s 2s 2s 2s 6d", "U1-4 K5"),
            ("2s 2s 2s 2s 2s 6d", "U1-5 K6"),
            ("6d 4s 4s 1s 6d", "K1 U2-4 K5"),
            ("6d 1s 6d", "resend [3]"),
            ("6d 4s 6d 2s", "resend [3]"),
            ("1s 1s 1s 6d", "resend [4]"),
            ("6d 1s 6d 1s 6d 1s", "resend [3, 5]"),
        ];
        for (spec, want) in table {
            assert_eq!(show(&plan(&chunks(spec), MIN)), want, "{spec}");
        }
    }

    #[test]
    fn parts_keep_their_numbers_when_chunks_are_not_contiguous() {
        let mut c = chunks("6s 1s 6d");
        c[1].number = 3;
        c[2].number = 7;
        let p = plan(&c, MIN).unwrap();
        assert_eq!(show(&Ok(p.clone())), "U1-3 K7");
        assert_eq!(p[0].len, 7);
    }

    /// Every plan of up to 6 chunks (sizes around the minimum, staged or direct): parts cover
    /// the chunks in order, ascend, and are at least the minimum but the last; a plan fails
    /// exactly when a run of staged chunks below the minimum is followed by a direct one.
    #[test]
    fn every_small_plan_is_valid() {
        let kinds = ["1s", "4s", "5s", "6s", "5d", "9d"];
        for n in 1..=6u32 {
            for code in 0..kinds.len().pow(n) {
                let spec: Vec<&str> = (0..n)
                    .map(|i| kinds[code / kinds.len().pow(i) % kinds.len()])
                    .collect();
                check(&chunks(&spec.join(" ")), &spec.join(" "));
            }
        }
    }

    fn check(chunks: &[Chunk], spec: &str) {
        let stuck: Vec<u32> = (0..chunks.len())
            .filter(|&j| j > 0 && chunks[j].held != Held::Staged)
            .filter(|&j| chunks[j - 1].held == Held::Staged)
            .filter(|&j| {
                let run = chunks[..j]
                    .iter()
                    .rev()
                    .take_while(|c| c.held == Held::Staged);
                run.map(|c| c.len).sum::<u64>() < MIN
            })
            .map(|j| chunks[j].number)
            .collect();
        let parts = match plan(chunks, MIN) {
            Err(e) => return assert_eq!(e.resend, stuck, "{spec}"),
            Ok(p) => p,
        };
        assert!(stuck.is_empty(), "{spec}");
        let covered: Vec<u32> = parts
            .iter()
            .flat_map(|p| match &p.source {
                Source::Upload { chunks } => chunks.clone(),
                _ => vec![p.number],
            })
            .collect();
        let numbers: Vec<u32> = chunks.iter().map(|c| c.number).collect();
        assert_eq!(covered, numbers, "{spec}");
        assert!(
            parts.windows(2).all(|w| w[0].number < w[1].number),
            "{spec}"
        );
        for p in &parts[..parts.len() - 1] {
            assert!(p.len >= MIN, "{spec}: {parts:?}");
        }
        let total: u64 = chunks.iter().map(|c| c.len).sum();
        assert_eq!(parts.iter().map(|p| p.len).sum::<u64>(), total, "{spec}");
    }
}
