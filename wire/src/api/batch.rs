//! Answer batches: many answers in one `POST /lookup/v1/answers` body, each a record of a
//! `u32` big-endian header length, a JSON [`AnswerBatchHeader`] and the answer's bytes.

use serde::{Deserialize, Serialize};

/// `Content-Type` of a `POST /lookup/v1/answers` body.
pub const ANSWERS_CONTENT_TYPE: &str = "application/x-rjs-answers";
/// Most records in one answer batch.
pub const MAX_ANSWER_BATCH: usize = 256;
/// Largest JSON header of one record, bytes.
pub const MAX_ANSWER_HEADER: usize = 4096;
/// An answer batch body may always be this large (bytes); the web server allows
/// `max(its --max-answer, MIN_ANSWER_BATCH_BODY)`.
pub const MIN_ANSWER_BATCH_BODY: u64 = 64 * 1024 * 1024;

/// The JSON header of one record of an answer batch: what the single-answer upload carries in
/// its URL and its `rjs-outcome` / `rjs-node` headers, plus the archive's length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerBatchHeader {
    pub job_id: i64,
    /// As [`H_OUTCOME`](super::H_OUTCOME): one printable line of 1 to
    /// [`MAX_OUTCOME`](super::MAX_OUTCOME) bytes.
    pub outcome: String,
    /// As [`H_NODE`](super::H_NODE): `[A-Za-z0-9._-]{1,64}`.
    pub node: String,
    /// Length of the answer archive that follows the header, bytes.
    pub size: u64,
}

/// What became of one record of an answer batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnswerBatchStatus {
    /// This answer is now the job's answer.
    Stored,
    /// The job already had an answer: this one was discarded.
    Duplicate,
    /// No such job: nothing was stored for this record.
    NotFound,
    /// The job's lease (or its last one) belongs to another lookup server, or the job was
    /// never leased: nothing was stored for this record.
    NotLeased,
}

impl AnswerBatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerBatchStatus::Stored => "stored",
            AnswerBatchStatus::Duplicate => "duplicate",
            AnswerBatchStatus::NotFound => "not-found",
            AnswerBatchStatus::NotLeased => "not-leased",
        }
    }
}

/// One record's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerBatchResult {
    pub job_id: i64,
    pub status: AnswerBatchStatus,
}

/// `POST /lookup/v1/answers` response: one result per record, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerBatchResponse {
    pub results: Vec<AnswerBatchResult>,
}

/// Why an answer batch body (or a record to encode) is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerFrameError {
    #[error("record {record}: header length {len} is not 1..={MAX_ANSWER_HEADER}")]
    HeaderLength { record: usize, len: u64 },
    #[error("record {record}: header JSON: {why}")]
    HeaderJson { record: usize, why: String },
    #[error("more than {MAX_ANSWER_BATCH} records")]
    TooManyRecords,
    /// An answer larger than the receiver's limit (the web server's `--max-answer`).
    #[error("record {record}: the answer's {size} bytes exceed the limit of {limit} bytes")]
    AnswerTooLarge {
        record: usize,
        size: u64,
        limit: u64,
    },
    #[error("the body ends inside record {record}")]
    Truncated { record: usize },
    /// [`encode_answer_record`]: the header's `size` is not the length of the bytes.
    #[error("the header says {declared} bytes, the answer has {actual}")]
    SizeMismatch { declared: u64, actual: u64 },
}

/// Appends one record to an answer batch body: `u32` big-endian length of the JSON header,
/// the header, then the answer's bytes. `header.size` must be `bytes.len()`.
pub fn encode_answer_record(
    out: &mut Vec<u8>,
    header: &AnswerBatchHeader,
    bytes: &[u8],
) -> Result<(), AnswerFrameError> {
    if header.size != bytes.len() as u64 {
        return Err(AnswerFrameError::SizeMismatch {
            declared: header.size,
            actual: bytes.len() as u64,
        });
    }
    let json = serde_json::to_vec(header).map_err(|e| AnswerFrameError::HeaderJson {
        record: 0,
        why: e.to_string(),
    })?;
    if json.is_empty() || json.len() > MAX_ANSWER_HEADER {
        return Err(AnswerFrameError::HeaderLength {
            record: 0,
            len: json.len() as u64,
        });
    }
    out.reserve(4 + json.len() + bytes.len());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(bytes);
    Ok(())
}

/// One step of decoding an answer batch ([`AnswerRecordDecoder::next`]).
#[derive(Debug, PartialEq, Eq)]
pub enum AnswerRecordEvent<'a> {
    /// A record starts: its header, checked (framing, JSON, size within the limit, count).
    Header(AnswerBatchHeader),
    /// The next piece of the current record's answer (never empty).
    Data(&'a [u8]),
    /// The current record's answer is complete.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecodeState {
    /// Reading the 4-byte header length (`buf` holds what has arrived).
    Length,
    /// Reading a header of this many bytes.
    Header(usize),
    /// Reading the answer: this many bytes left.
    Data(u64),
    /// The answer is complete: `End` is next.
    End,
}

/// Incremental decoder of an answer batch body, fed the body in pieces as they arrive: it
/// never holds more than one record header (≤ [`MAX_ANSWER_HEADER`] bytes) and hands answer
/// bytes out as borrowed slices of the input.
///
/// ```
/// # use rjs_wire::api::*;
/// let mut body = Vec::new();
/// let h = AnswerBatchHeader { job_id: 7, outcome: "exit 0".into(), node: "n1".into(), size: 3 };
/// encode_answer_record(&mut body, &h, b"abc").unwrap();
/// let mut dec = AnswerRecordDecoder::new(1024);
/// let mut input = &body[..];
/// assert_eq!(dec.next(&mut input).unwrap(), Some(AnswerRecordEvent::Header(h)));
/// assert_eq!(dec.next(&mut input).unwrap(), Some(AnswerRecordEvent::Data(b"abc")));
/// assert_eq!(dec.next(&mut input).unwrap(), Some(AnswerRecordEvent::End));
/// assert_eq!(dec.next(&mut input).unwrap(), None); // needs more input (or the body ended)
/// dec.finish().unwrap();
/// ```
#[derive(Debug)]
pub struct AnswerRecordDecoder {
    max_answer: u64,
    state: DecodeState,
    buf: Vec<u8>,
    /// Records whose header has been read.
    records: usize,
}

impl AnswerRecordDecoder {
    /// A decoder refusing answers over `max_answer` bytes and more than [`MAX_ANSWER_BATCH`]
    /// records.
    pub fn new(max_answer: u64) -> Self {
        AnswerRecordDecoder {
            max_answer,
            state: DecodeState::Length,
            buf: Vec::new(),
            records: 0,
        }
    }

    /// Records started so far.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Decodes the next event from `input`, advancing it past what was consumed. `Ok(None)`:
    /// `input` is used up and more is needed. After an error the decoder must not be used
    /// again.
    pub fn next<'a>(
        &mut self,
        input: &mut &'a [u8],
    ) -> Result<Option<AnswerRecordEvent<'a>>, AnswerFrameError> {
        loop {
            match self.state {
                DecodeState::End => {
                    self.state = DecodeState::Length;
                    return Ok(Some(AnswerRecordEvent::End));
                }
                DecodeState::Data(left) => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    let (piece, rest) = input.split_at(n);
                    *input = rest;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        DecodeState::End
                    } else {
                        DecodeState::Data(left)
                    };
                    return Ok(Some(AnswerRecordEvent::Data(piece)));
                }
                DecodeState::Length => {
                    if !fill(&mut self.buf, input, 4) {
                        return Ok(None);
                    }
                    let len =
                        u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                    self.buf.clear();
                    if self.records >= MAX_ANSWER_BATCH {
                        return Err(AnswerFrameError::TooManyRecords);
                    }
                    if len == 0 || len as usize > MAX_ANSWER_HEADER {
                        return Err(AnswerFrameError::HeaderLength {
                            record: self.records,
                            len: u64::from(len),
                        });
                    }
                    self.state = DecodeState::Header(len as usize);
                }
                DecodeState::Header(len) => {
                    if !fill(&mut self.buf, input, len) {
                        return Ok(None);
                    }
                    let record = self.records;
                    let header: AnswerBatchHeader =
                        serde_json::from_slice(&self.buf).map_err(|e| {
                            AnswerFrameError::HeaderJson {
                                record,
                                why: e.to_string(),
                            }
                        })?;
                    self.buf.clear();
                    if header.size > self.max_answer {
                        return Err(AnswerFrameError::AnswerTooLarge {
                            record,
                            size: header.size,
                            limit: self.max_answer,
                        });
                    }
                    self.records += 1;
                    self.state = if header.size == 0 {
                        DecodeState::End
                    } else {
                        DecodeState::Data(header.size)
                    };
                    return Ok(Some(AnswerRecordEvent::Header(header)));
                }
            }
        }
    }

    /// The body ended: an error unless it ended between two records. Call it once `next`
    /// has returned `None` for the last piece of the body.
    pub fn finish(&self) -> Result<(), AnswerFrameError> {
        match self.state {
            DecodeState::Length if self.buf.is_empty() => Ok(()),
            // A record's length or header was cut.
            DecodeState::Length | DecodeState::Header(_) => Err(AnswerFrameError::Truncated {
                record: self.records,
            }),
            DecodeState::Data(_) | DecodeState::End => Err(AnswerFrameError::Truncated {
                record: self.records.saturating_sub(1),
            }),
        }
    }
}

/// Moves bytes from the front of `input` into `buf` until `buf` holds `len` bytes; whether it
/// does now.
fn fill(buf: &mut Vec<u8>, input: &mut &[u8], len: usize) -> bool {
    let n = len.saturating_sub(buf.len()).min(input.len());
    let (taken, rest) = input.split_at(n);
    buf.extend_from_slice(taken);
    *input = rest;
    buf.len() >= len
}

/// Decodes a whole answer batch body held in memory: (header, answer) per record, in order.
pub fn decode_answer_records(
    body: &[u8],
    max_answer: u64,
) -> Result<Vec<(AnswerBatchHeader, Vec<u8>)>, AnswerFrameError> {
    let mut dec = AnswerRecordDecoder::new(max_answer);
    let mut input = body;
    let mut out: Vec<(AnswerBatchHeader, Vec<u8>)> = Vec::new();
    while let Some(ev) = dec.next(&mut input)? {
        match ev {
            AnswerRecordEvent::Header(h) => {
                let cap = usize::try_from(h.size).unwrap_or(0).min(body.len());
                out.push((h, Vec::with_capacity(cap)));
            }
            AnswerRecordEvent::Data(d) => {
                if let Some((_, bytes)) = out.last_mut() {
                    bytes.extend_from_slice(d);
                }
            }
            AnswerRecordEvent::End => {}
        }
    }
    dec.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(job_id: i64, size: usize) -> AnswerBatchHeader {
        AnswerBatchHeader {
            job_id,
            outcome: "exit 0".into(),
            node: "node-1".into(),
            size: size as u64,
        }
    }

    fn body(records: &[(i64, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (id, bytes) in records {
            encode_answer_record(&mut out, &header(*id, bytes.len()), bytes).unwrap();
        }
        out
    }

    /// Feeds `body` in pieces of `piece` bytes; returns the records or the first error.
    fn decode_in_pieces(
        body: &[u8],
        piece: usize,
        max_answer: u64,
    ) -> Result<Vec<(AnswerBatchHeader, Vec<u8>)>, AnswerFrameError> {
        let mut dec = AnswerRecordDecoder::new(max_answer);
        let mut out: Vec<(AnswerBatchHeader, Vec<u8>)> = Vec::new();
        let mut ended = true;
        for chunk in body.chunks(piece) {
            let mut input = chunk;
            while let Some(ev) = dec.next(&mut input)? {
                match ev {
                    AnswerRecordEvent::Header(h) => {
                        assert!(ended, "a header before the previous record ended");
                        ended = false;
                        out.push((h, Vec::new()));
                    }
                    AnswerRecordEvent::Data(d) => {
                        assert!(!d.is_empty());
                        out.last_mut().unwrap().1.extend_from_slice(d);
                    }
                    AnswerRecordEvent::End => {
                        assert!(!ended);
                        ended = true;
                    }
                }
            }
            assert!(input.is_empty());
        }
        dec.finish()?;
        assert_eq!(dec.records(), out.len());
        Ok(out)
    }

    #[test]
    fn answer_records_round_trip_in_any_pieces() {
        let records = vec![
            (1, b"PK first".to_vec()),
            (2, Vec::new()),
            (3, (0..5000u32).map(|i| i as u8).collect()),
            (4, b"x".to_vec()),
        ];
        let b = body(&records);
        for piece in [1, 2, 3, 4, 5, 7, 64, 1000, b.len()] {
            let got = decode_in_pieces(&b, piece, 10_000).unwrap();
            let got: Vec<(i64, Vec<u8>)> = got
                .into_iter()
                .map(|(h, bytes)| {
                    assert_eq!(h.size, bytes.len() as u64);
                    (h.job_id, bytes)
                })
                .collect();
            assert_eq!(got, records, "pieces of {piece}");
        }
        assert_eq!(decode_answer_records(&b, 10_000).unwrap().len(), 4);
        assert!(decode_answer_records(&[], 10).unwrap().is_empty());
    }

    #[test]
    fn malformed_answer_batches_are_refused() {
        let b = body(&[(1, b"abc".to_vec()), (2, b"defg".to_vec())]);
        // Cut anywhere inside: truncated.
        for cut in 1..b.len() {
            let boundary = cut == 4 + serde_json::to_vec(&header(1, 3)).unwrap().len() + 3;
            let r = decode_answer_records(&b[..cut], 100);
            if boundary {
                assert_eq!(r.unwrap().len(), 1);
            } else {
                assert!(
                    matches!(r, Err(AnswerFrameError::Truncated { .. })),
                    "cut {cut}: {r:?}"
                );
            }
        }
        // Answer over the limit.
        assert!(matches!(
            decode_answer_records(&b, 3),
            Err(AnswerFrameError::AnswerTooLarge {
                record: 1,
                size: 4,
                limit: 3
            })
        ));
        // Header lengths 0 and over the limit.
        for len in [0u32, MAX_ANSWER_HEADER as u32 + 1, u32::MAX] {
            let mut bad = len.to_be_bytes().to_vec();
            bad.extend_from_slice(&[b' '; 16]);
            assert!(matches!(
                decode_answer_records(&bad, 100),
                Err(AnswerFrameError::HeaderLength { record: 0, .. })
            ));
        }
        // Bad JSON, unknown fields, missing fields.
        for json in [
            &b"{"[..],
            br#"{"job_id":1,"outcome":"exit 0","node":"n","size":0,"extra":1}"#,
            br#"{"job_id":1,"outcome":"exit 0","size":0}"#,
            br#"{"job_id":"1","outcome":"exit 0","node":"n","size":0}"#,
            br#"{"job_id":1,"outcome":"exit 0","node":"n","size":-1}"#,
        ] {
            let mut bad = (json.len() as u32).to_be_bytes().to_vec();
            bad.extend_from_slice(json);
            assert!(
                matches!(
                    decode_answer_records(&bad, 100),
                    Err(AnswerFrameError::HeaderJson { record: 0, .. })
                ),
                "{}",
                String::from_utf8_lossy(json)
            );
        }
        // Too many records.
        let many: Vec<(i64, Vec<u8>)> = (1..=MAX_ANSWER_BATCH as i64 + 1)
            .map(|i| (i, vec![1]))
            .collect();
        assert_eq!(
            decode_answer_records(&body(&many[..MAX_ANSWER_BATCH]), 1)
                .unwrap()
                .len(),
            MAX_ANSWER_BATCH
        );
        assert_eq!(
            decode_answer_records(&body(&many), 1),
            Err(AnswerFrameError::TooManyRecords)
        );
        // Encoding checks the size.
        let mut out = Vec::new();
        assert!(matches!(
            encode_answer_record(&mut out, &header(1, 2), b"abc"),
            Err(AnswerFrameError::SizeMismatch { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn batch_statuses_on_the_wire() {
        let r = AnswerBatchResponse {
            results: vec![
                AnswerBatchResult {
                    job_id: 1,
                    status: AnswerBatchStatus::Stored,
                },
                AnswerBatchResult {
                    job_id: 2,
                    status: AnswerBatchStatus::Duplicate,
                },
                AnswerBatchResult {
                    job_id: 3,
                    status: AnswerBatchStatus::NotFound,
                },
            ],
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"results":[{"job_id":1,"status":"stored"},{"job_id":2,"status":"duplicate"},{"job_id":3,"status":"not-found"}]}"#
        );
        for s in [
            AnswerBatchStatus::Stored,
            AnswerBatchStatus::Duplicate,
            AnswerBatchStatus::NotFound,
            AnswerBatchStatus::NotLeased,
        ] {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }
}
