use burn_lora::LoraModel;

// A model must be generic over its backend (`struct Cache<B: Backend>`).
#[derive(LoraModel)]
struct Cache<T> {
    entries: Vec<T>,
}

fn main() {}
