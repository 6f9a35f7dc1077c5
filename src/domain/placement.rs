//! Where a chunk of a chunked upload goes when it arrives: straight to the store as multipart
//! part n ("direct"), or held as a staging object to be packed at merge ("staged").
//!
//! A direct part cannot be read back before the upload completes, so it can never be joined
//! with the chunks before it: it may only follow chunks that already form valid parts. The
//! rule below keeps that true whatever the arrival order, so the merge plan
//! (`storage::s3::plan`) always exists unless a chunk is sent again smaller than before.

/// A chunk already received, as the rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub number: u32,
    pub len: u64,
    pub staged: bool,
}

/// Whether chunk `number` of `len` bytes is sent as a direct part, on a store whose non-final
/// parts must be at least `min` bytes (0: no minimum, always direct). `received` holds the
/// other chunks of the upload (an earlier copy of this one left out), ascending.
///
/// Direct iff it is at least `min`, every chunk before it is here, and the staged chunks just
/// before it (the longest run of consecutive staged chunks ending at `number - 1`) are none
/// or at least `min` together. Clients sending big chunks in order keep the zero-copy path.
pub fn send_direct(number: u32, len: u64, min: u64, received: &[Received]) -> bool {
    if min == 0 {
        return true;
    }
    if len < min {
        return false;
    }
    let before: Vec<&Received> = received.iter().filter(|c| c.number < number).collect();
    if before.len() as u64 != u64::from(number) - 1 {
        return false;
    }
    let run: Vec<&&Received> = before.iter().rev().take_while(|c| c.staged).collect();
    run.is_empty() || run.iter().map(|c| c.len).sum::<u64>() >= min
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::s3::plan::{self, Chunk, Held};

    const MIN: u64 = 5;

    fn got(chunks: &[Got]) -> Vec<Received> {
        chunks
            .iter()
            .map(|&(number, len, staged)| Received {
                number,
                len,
                staged,
            })
            .collect()
    }

    /// Chunk number, length, staged.
    type Got = (u32, u64, bool);

    #[test]
    fn rule() {
        let table: [(u32, u64, &[Got], bool); 12] = [
            (1, 6, &[], true),
            (1, 4, &[], false),
            (1, 5, &[(2, 6, true)], true),
            (2, 6, &[(1, 6, false)], true),
            // A chunk before it is missing.
            (3, 6, &[], false),
            (3, 6, &[(1, 6, false)], false),
            // Staged chunks before it: none, enough, too few.
            (3, 6, &[(1, 4, true), (2, 4, true)], true),
            (3, 6, &[(1, 6, false), (2, 4, true)], false),
            (4, 6, &[(1, 1, true), (2, 6, false), (3, 5, true)], true),
            (4, 6, &[(1, 9, true), (2, 1, true), (3, 1, true)], true),
            (4, 6, &[(1, 9, true), (2, 1, false), (3, 1, true)], false),
            // Below the minimum: staged, whatever came before.
            (2, 4, &[(1, 6, false)], false),
        ];
        for (number, len, received, want) in table {
            assert_eq!(
                send_direct(number, len, MIN, &got(received)),
                want,
                "chunk {number} of {len} after {received:?}"
            );
        }
        // No minimum (the local store): always direct.
        assert!(send_direct(3, 1, 0, &[]));
    }

    /// Places chunks of `sizes` arriving in `order` by the rule; returns them in order.
    fn place(sizes: &[u64], order: &[usize]) -> Vec<Chunk> {
        let mut held: Vec<Received> = vec![];
        for &i in order {
            let number = i as u32 + 1;
            held.retain(|c| c.number != number);
            let direct = send_direct(number, sizes[i], MIN, &held);
            held.push(Received {
                number,
                len: sizes[i],
                staged: !direct || sizes[i] < MIN,
            });
            held.sort_by_key(|c| c.number);
        }
        held.iter()
            .map(|c| Chunk {
                number: c.number,
                len: c.len,
                held: match c.staged {
                    true => Held::Staged,
                    false => Held::Direct {
                        etag: format!("e{}", c.number),
                    },
                },
            })
            .collect()
    }

    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut out = vec![];
        for p in permutations(n - 1) {
            for at in 0..=p.len() {
                let mut q = p.clone();
                q.insert(at, n - 1);
                out.push(q);
            }
        }
        out
    }

    /// Any arrival order of any chunk sizes (around the minimum, up to 5 chunks) merges into
    /// valid parts; sequential big chunks are all direct.
    #[test]
    fn every_arrival_order_merges() {
        let sizes_of = |n: usize, kinds: &[u64], code: usize| -> Vec<u64> {
            (0..n)
                .map(|i| kinds[code / kinds.len().pow(i as u32) % kinds.len()])
                .collect()
        };
        let around: &[u64] = &[1, 4, 5, 6];
        for (n, kinds) in [
            (1, around),
            (2, around),
            (3, around),
            (4, around),
            (5, &[1, 6]),
        ] {
            for code in 0..kinds.len().pow(n as u32) {
                let sizes = sizes_of(n, kinds, code);
                for order in permutations(n) {
                    let parts = plan::plan(&place(&sizes, &order), MIN);
                    let parts = parts.unwrap_or_else(|e| panic!("{sizes:?} in {order:?}: {e:?}"));
                    for p in &parts[..parts.len() - 1] {
                        assert!(p.len >= MIN, "{sizes:?} in {order:?}: {parts:?}");
                    }
                }
            }
        }
        let in_order = place(&[50, 50, 50, 7], &[0, 1, 2, 3]);
        assert!(in_order.iter().all(|c| c.held != Held::Staged));
    }

    /// A direct chunk after a chunk sent again smaller cannot be merged; once it is sent again
    /// too, it is staged and the merge works.
    #[test]
    fn a_smaller_resend_is_repaired_by_sending_the_next_chunk_again() {
        let mut chunks = place(&[6, 6, 6], &[0, 1, 2]);
        chunks[1] = Chunk {
            number: 2,
            len: 1,
            held: Held::Staged,
        };
        let e = plan::plan(&chunks, MIN).unwrap_err();
        assert_eq!(e.resend, [3]);
        let held = got(&[(1, 6, false), (2, 1, true)]);
        assert!(!send_direct(3, 6, MIN, &held));
        chunks[2].held = Held::Staged;
        assert!(plan::plan(&chunks, MIN).is_ok());
    }
}
