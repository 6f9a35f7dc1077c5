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
//!
//! Some stores (Ceph's RADOS Gateway) complete an upload only from every part it holds. A chunk
//! sent as a part and later again as a staging object (smaller) leaves that part behind, so
//! [`cover`] then renumbers and splits groups until each part the store holds is overwritten.

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
    /// The part's `len` bytes from `skip` bytes into these staged chunks (in order).
    Slice { chunks: Vec<u32>, skip: u64 },
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

/// Makes the parts of `parts` (a plan) cover every number in `held`, the parts the store holds
/// for the upload: a group of staged chunks whose numbers include held ones is cut into one
/// slice per held number (each at least `min` bytes, but the object's last). `None` when the
/// sizes do not allow it; held numbers outside every group are left alone.
pub fn cover(parts: Vec<Part>, held: &[u32], min: u64) -> Option<Vec<Part>> {
    let last = parts.len().saturating_sub(1);
    let mut out = Vec::with_capacity(parts.len());
    for (i, part) in parts.into_iter().enumerate() {
        let chunks = match &part.source {
            Source::Upload { chunks } => chunks.clone(),
            _ => {
                out.push(part);
                continue;
            }
        };
        let (first, end) = (chunks[0], chunks[chunks.len() - 1]);
        let mut numbers: Vec<u32> = held
            .iter()
            .copied()
            .filter(|n| (first..=end).contains(n))
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        match numbers.len() {
            0 => out.push(part),
            1 => out.push(Part {
                number: numbers[0],
                ..part
            }),
            k => {
                let k = k as u64;
                // Even slices, or slices of the minimum with the rest last (the object's end).
                let piece = (part.len / k).max(min);
                let rest = part.len.checked_sub(piece * (k - 1)).filter(|&r| r > 0)?;
                if i != last && rest < min {
                    return None;
                }
                for (j, &number) in numbers.iter().enumerate() {
                    let j = j as u64;
                    out.push(Part {
                        number,
                        len: if j == k - 1 { rest } else { piece },
                        source: Source::Slice {
                            chunks: chunks.clone(),
                            skip: piece * j,
                        },
                    });
                }
            }
        }
    }
    Some(out)
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
                    Source::Upload { chunks } if p.number == chunks[0] => {
                        format!("U{}-{}", chunks[0], chunks[chunks.len() - 1])
                    }
                    Source::Upload { chunks } => {
                        format!("U{}:{}-{}", p.number, chunks[0], chunks[chunks.len() - 1])
                    }
                    Source::Slice { chunks, skip } => format!(
                        "S{}:{}-{}+{skip}:{}",
                        p.number,
                        chunks[0],
                        chunks[chunks.len() - 1],
                        p.len
                    ),
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

    /// Parts the store holds from chunks sent directly before, now staged: every one of them is
    /// a part of the completion ("S2:2-3+0:5" is part 2 of 5 bytes from 0 bytes into chunks
    /// 2..3).
    #[test]
    fn covers_the_parts_the_store_holds() {
        let table = [
            // Nothing held inside a group: the plan as it is.
            ("6d 1s 6s", &[1u32][..], Some("K1 U2-3")),
            // Held at the group's first number, or at another one of its chunks.
            ("6d 1s 6s", &[1, 2], Some("K1 U2-3")),
            ("6d 1s 6s", &[1, 3], Some("K1 U3:2-3")),
            // Held at both: one slice each, the object's end may be small.
            ("6d 1s 6s", &[1, 2, 3], Some("K1 S2:2-3+0:5 S3:2-3+5:2")),
            ("6d 1s 6s 6d", &[1, 2, 3, 4], None),
            ("6d 6s 6s 6d", &[1, 2, 3, 4], Some("K1 C2 C3 K4")),
            ("6d 4s 4s 4s 6d", &[1, 2, 3, 4, 5], None),
            (
                "6d 4s 4s 4s 6d",
                &[1, 3, 4, 5],
                Some("K1 S3:2-4+0:6 S4:2-4+6:6 K5"),
            ),
            ("1s 1s 1s", &[2], Some("U2:1-3")),
            ("1s 1s 1s", &[1, 2, 3], None),
            ("6s 6s 6s", &[1, 2, 3], Some("C1 C2 C3")),
            ("2s 2s 2s 2s 2s", &[1, 3, 5], None),
            (
                "2s 2s 2s 4s 4s",
                &[4, 5],
                Some("U1-3 S4:4-5+0:5 S5:4-5+5:3"),
            ),
        ];
        for (spec, held, want) in table {
            let got = cover(plan(&chunks(spec), MIN).unwrap(), held, MIN);
            let got = got.map(|p| show(&Ok(p)));
            assert_eq!(got.as_deref(), want, "{spec} holding {held:?}");
        }
    }

    /// Covered plans stay valid: ascending numbers, every held number inside a group used,
    /// slices joining into the group's bytes, the minimum kept but at the end.
    #[test]
    fn covered_plans_are_valid() {
        for spec in specs(&["1s", "4s", "6s", "11s", "6d"], 5) {
            let c = chunks(&spec);
            let Ok(planned) = plan(&c, MIN) else { continue };
            let n = c.len() as u32;
            for mask in 0..(1u32 << n) {
                let held: Vec<u32> = (1..=n).filter(|k| mask & (1 << (k - 1)) != 0).collect();
                let Some(parts) = cover(planned.clone(), &held, MIN) else {
                    continue;
                };
                let what = format!("{spec} holding {held:?}: {parts:?}");
                assert_parts_fit(&parts, &c, &what);
                for g in &planned {
                    if let Source::Upload { chunks } = &g.source {
                        let span = chunks[0]..=chunks[chunks.len() - 1];
                        for h in held.iter().filter(|h| span.contains(h)) {
                            assert!(parts.iter().any(|p| p.number == *h), "{what}");
                        }
                    }
                }
            }
        }
    }

    /// Every spec of 1 to `most` chunks of these kinds (`"1s 6d"`: a staged 1-byte chunk,
    /// then a direct 6-byte one).
    fn specs(kinds: &[&str], most: u32) -> Vec<String> {
        (1..=most)
            .flat_map(|n| {
                (0..kinds.len().pow(n)).map(move |code| {
                    let spec: Vec<&str> = (0..n)
                        .map(|i| kinds[code / kinds.len().pow(i) % kinds.len()])
                        .collect();
                    spec.join(" ")
                })
            })
            .collect()
    }

    /// Parts ascend, are at least the minimum but the last, and add up to the chunks.
    fn assert_parts_fit(parts: &[Part], chunks: &[Chunk], what: &str) {
        assert!(
            parts.windows(2).all(|w| w[0].number < w[1].number),
            "{what}"
        );
        for p in &parts[..parts.len() - 1] {
            assert!(p.len >= MIN, "{what}");
        }
        let total: u64 = chunks.iter().map(|c| c.len).sum();
        assert_eq!(parts.iter().map(|p| p.len).sum::<u64>(), total, "{what}");
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
        for spec in specs(&["1s", "4s", "5s", "6s", "5d", "9d"], 6) {
            check(&chunks(&spec), &spec);
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
        assert_parts_fit(&parts, chunks, &format!("{spec}: {parts:?}"));
    }
}
