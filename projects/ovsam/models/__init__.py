from .baselines import SAMCropCLIP, SAMMaskPoolCLIP
from .classifier import TextClassifier
from .clip2sam import CLIP2SAMHead
from .clip_backbone import OpenCLIPBackbone, clip_text_tower
from .data_preprocessor import OVSAMDataPreprocessor
from .frequency_split import OVSAMFrequencySplit
from .ov_ensemble import open_vocab_ensemble
from .ovsam import OVSAM, ImageFeatures, PromptOutputs
from .prompt_encoder import SAMPromptEncoder
from .prompts import PromptError
from .quantized_vocabulary import Int8TextClassifier, quantize_vocabulary
from .sam2clip import SAM2CLIPAdapter
from .sam2clip_distill import SAM2CLIPDistiller
from .sam_parts import SAMParts, build_sam_image_encoder, build_sam_mask_decoder
from .sam_teacher import SAMImageEncoder
from .sam_trainer import PromptableSAM

__all__ = [
    'CLIP2SAMHead', 'OVSAM', 'OVSAMDataPreprocessor', 'OpenCLIPBackbone', 'PromptError', 'PromptableSAM', 'SAM2CLIPDistiller', 'SAMImageEncoder', 'build_sam_image_encoder',
    'SAM2CLIPAdapter', 'SAMPromptEncoder', 'TextClassifier', 'clip_text_tower', 'open_vocab_ensemble',
    'SAMCropCLIP', 'SAMMaskPoolCLIP', 'OVSAMFrequencySplit', 'ImageFeatures', 'PromptOutputs', 'SAMParts',
    'build_sam_mask_decoder', 'Int8TextClassifier', 'quantize_vocabulary'
]
