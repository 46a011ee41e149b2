//! [`TextStream`]: the text of generated tokens as they come, in whole characters.

use tokenizers::Tokenizer;

use crate::error::{LoraError, Result};

/// Turns one sequence's generated token ids into text as they come, for
/// [`CausalLm::generate`](super::CausalLm::generate)'s streaming callback (one stream per row).
///
/// Decoding one token at a time breaks text: a character of several UTF-8 bytes spans several
/// byte-level tokens, and a SentencePiece decoder strips the space a word token starts with
/// when the token comes first. A `TextStream` decodes a short window of recent tokens instead,
/// and emits what the newest tokens add to the window's text, only once that text does not end
/// in an incomplete character (U+FFFD); the window then moves on. The emitted pieces, joined,
/// are the sequence's text as the tokenizer decodes it whole.
///
/// ```no_run
/// # use burn::backend::Flex;
/// # use burn_lora::nn::llama::{CausalLm, GenerationConfig, TextStream};
/// # fn run(lm: &CausalLm<Flex>, tokenizer: &tokenizers::Tokenizer, prompt: Vec<u32>) -> burn_lora::Result<()> {
/// let mut stream = TextStream::new(tokenizer, true);
/// lm.generate(&[prompt], None, &GenerationConfig::new(64), |event| {
///     if let Ok(text) = stream.push(event.token) {
///         print!("{text}");
///     }
/// })?;
/// print!("{}", stream.finish()?);
/// # Ok(())
/// # }
/// ```
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    /// The window starts here: tokens before it are emitted and no longer decoded.
    prefix: usize,
    /// Tokens before this one are emitted.
    read: usize,
}

impl<'a> TextStream<'a> {
    /// A stream decoding with `tokenizer`, leaving special tokens out when
    /// `skip_special_tokens` is set.
    pub fn new(tokenizer: &'a Tokenizer, skip_special_tokens: bool) -> Self {
        Self {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, self.skip_special_tokens)
            .map_err(|e| LoraError::InvalidInput(format!("decoding tokens {ids:?}: {e}")))
    }

    /// Adds the next token and returns the text it completes: empty while it ends inside a
    /// character (or adds no text).
    ///
    /// # Errors
    /// [`LoraError::InvalidInput`] when the tokenizer cannot decode the tokens (an id outside
    /// its vocabulary).
    pub fn push(&mut self, token: u32) -> Result<String> {
        self.ids.push(token);
        let before = self.decode(&self.ids[self.prefix..self.read])?;
        let now = self.decode(&self.ids[self.prefix..])?;
        if now.len() <= before.len() || now.ends_with('\u{FFFD}') || !now.starts_with(&before) {
            return Ok(String::new());
        }
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(now[before.len()..].to_string())
    }

    /// The text of the tokens not emitted yet (a character left incomplete at the end of the
    /// sequence comes out as U+FFFD, as a whole decode gives it).
    ///
    /// # Errors
    /// As [`push`](Self::push).
    pub fn finish(self) -> Result<String> {
        let before = self.decode(&self.ids[self.prefix..self.read])?;
        let now = self.decode(&self.ids[self.prefix..])?;
        Ok(now.strip_prefix(&before).unwrap_or(&now).to_string())
    }
}
