//! The body of `POST /lookup/v1/answers` (every answer with outcome `exit 0` from `node-1`).
//! Shared by the API tests and the benches.

use rjs_wire::api::{AnswerBatchHeader, encode_answer_record};

/// The framed records of these (job id, answer bytes), in order.
pub fn answer_batch<B: AsRef<[u8]>>(answers: &[(i64, B)]) -> Vec<u8> {
    let mut body = Vec::with_capacity(answers.iter().map(|(_, a)| a.as_ref().len() + 100).sum());
    for (job, bytes) in answers {
        let bytes = bytes.as_ref();
        let h = AnswerBatchHeader {
            job_id: *job,
            outcome: "exit 0".into(),
            node: "node-1".into(),
            size: bytes.len() as u64,
        };
        encode_answer_record(&mut body, &h, bytes).unwrap();
    }
    body
}
