"""The offline, seeded prompt grammar of stage 04 (the ``template`` backend).

A prompt is a list of :class:`Clause` s, each with a *rank*: 0 is the subject and the one
transformation (never dropped), higher ranks are elaborations the compressor may drop first
(1: what makes the level -- what is kept, or the family's key detail; 2: further details;
3: context and mood; 4: quality tags). Phrases come from a small generative grammar: an
alternative may name other slots (``{light}``), and one prompt never uses an alternative twice.

Moderate prompts keep the composition and the main subject and change one of colour,
lighting, technique, season or time of day. Radical prompts change the style, era, medium
or setting through one of ten families.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from artsim_lib.config.schema import MODERATE_FAMILIES, RADICAL_FAMILIES  # noqa: F401  (the one list)

LEVELS = ("moderate", "radical")


@dataclass(frozen=True)
class Clause:
    """A comma-separated part of a prompt; a higher ``rank`` is dropped sooner."""

    text: str
    rank: int


def _parse(block: str) -> dict[str, list[str]]:
    """``name: alt | alt`` lines (continued on indented lines) -> {name: [alt, ...]}."""
    slots: dict[str, list[str]] = {}
    name = None
    for line in block.strip().splitlines():
        head = re.match(r"^(\w+):\s*(.*)$", line)
        if head:
            name, line = head.group(1), head.group(2)
            slots[name] = []
        slots[name] += [alt.strip() for alt in line.split("|") if alt.strip()]
    return slots


SLOTS = _parse("""
colour: crimson | cobalt blue | yellow ochre | viridian | ultramarine | burnt sienna | lemon yellow | rose madder
    | slate grey | deep teal | amber | violet | emerald green | vermilion | ivory | indigo | copper | sage green
    | dusty pink | plum | turquoise | olive | pale gold | charcoal black
palette: a {palette_mood} palette of {colour}, {colour} and {colour}
    | {colour} and {colour} tones with touches of {colour}
    | a muted earthy range of ochre, umber and olive | cool blues and silvery greys | warm golds, oranges and deep reds
    | soft pastel pinks, mint and lavender | a near-monochrome scale of {colour}
    | black, white and one accent of {colour}
    | jewel tones of emerald, sapphire and ruby | faded sepia and cream like an old photograph
    | complementary {colour} against {colour}
palette_mood: cool | warm | muted | vibrant | earthy | pastel | saturated | restrained | sombre | sun-bleached
recolour: recoloured in | repainted in | reworked in | with its colours changed to | translated into | now in
colour_detail: {colour} accents on the main subject | harmonious {palette_mood} tones throughout
    | smooth gradients from {colour} to {colour} | colour carried deep into the shadows | {colour} highlights
    | the original values kept while every hue shifts | a {colour} glow in the background
    | bold flat areas of {colour}
light: soft diffused morning light | warm golden-hour sunlight | cold blue moonlight | flickering candlelight
    | dramatic chiaroscuro from a single window | hazy overcast daylight | harsh midday sun
    | the glow of paper lanterns | backlight that rims every figure in gold | the green light before a storm
    | a theatrical spotlight from above | light reflected off rippling water
lit: bathed in | lit by | seen in | transformed by | under | glowing in
lighting_detail: shadows reshaped by the new light | luminous highlights on faces and fabric
    | deep shadows pooling in the corners | light sparkling on every edge | a gentle glow on the main subject
    | atmospheric haze softening the distance | crisp cast shadows | light bouncing softly into the shadows
    | glowing rim light on the figures
technique: loose impasto brushwork with thick paint | delicate watercolour washes | fine pointillist dots of pure colour
    | crisp pen and ink hatching | soft pastel strokes on toned paper | bold palette-knife texture
    | thin transparent oil glazes | smudged charcoal and white chalk | flat gouache shapes with clean edges
    | expressive gestural brushstrokes | egg tempera with fine cross-hatching | ink wash with dry-brush edges
repaint: repainted with | rendered in | redone in | reinterpreted with | painted again in
technique_detail: visible brush marks | the grain of the paper showing through | layered translucent colour
    | broken colour in small touches | careful modelling of every form | energetic marks in the background
    | soft blended transitions | the weave of the canvas visible | unfinished edges left raw
season: deep winter with fresh snow on every roof and branch#winter
    | early spring with blossom and pale new leaves#spring | high summer with lush foliage and golden fields#summer
    | late autumn with leaves of amber, rust and gold#autumn | a frosty winter morning with rime on the grass#winter
    | the rainy season with puddles and wet reflections#rain | midsummer with wild flowers everywhere#summer
    | the first snow of the year#winter
set_in: set in | moved to | transposed to | seen in | now in
season_detail_winter: frost on the windows | bare branches against a pale sky | breath visible in the cold air
    | snow-laden trees | icicles hanging from the eaves | footprints in the snow | a low winter sun
season_detail_spring: blossom petals in the air | fresh green shoots | young leaves catching the light
    | puddles from a spring shower | birds returning to the branches | wild flowers opening
season_detail_summer: heat shimmer over the fields | ripe fruit and tall grass | deep green shade under the trees
    | dusty golden light | sun-bleached colours | insects buzzing in the warm air
season_detail_autumn: falling leaves drifting in the wind | a carpet of leaves on the ground | half-bare branches
    | mist over damp fields | a low golden sun | ripe apples in the grass
season_detail_rain: puddles reflecting the scene | rain streaking the air | wet, glistening surfaces
    | water dripping from the eaves | grey clouds low over the scene
time: dawn with the first pale light on the horizon#dawn | sunrise under a pink and orange sky#dawn
    | bright midday with a high sun#day | late afternoon with long shadows#day | sunset under a burning orange sky#dusk
    | dusk with a deep violet sky#dusk | the blue hour just after sunset#dusk
    | night lit only by the moon and stars#night
    | midnight with glowing windows#night | twilight as the first street lamps come on#dusk
seen_at: seen at | painted at | moved to | shown at | at
time_of_day_detail_dawn: mist rising from the ground | the sky blushing at the horizon | dew on every surface
    | long pale shadows | the last stars fading
time_of_day_detail_day: crisp shadows | bright clear colours | the sky reflected in windows and water
    | warm light on every surface | a few clouds drifting overhead
time_of_day_detail_dusk: dark silhouettes against the glowing sky | the first lamps lit in the windows
    | light fading at the edges of the scene | the sky reflected in windows and water | a last warm glow on the rooftops
time_of_day_detail_night: stars appearing overhead | warm lamplight spilling from doorways | the moon low on the horizon
    | a few lit windows in the distance | deep blue shadows
keep: same composition and main subject | keeping the original composition, figures and poses
    | the layout and the main subject unchanged | faithful to the original framing and perspective
    | every figure and object in its original place | only the {aspect} changes
aspect_colour: colour scheme
aspect_lighting: lighting
aspect_technique: painting technique
aspect_season: season
aspect_time_of_day: time of day
mood: calm | tense | joyful | melancholic | dreamlike | solemn | festive | intimate | mysterious | nostalgic
context: echoing its {style} origins | the subject still clearly recognisable
    | a {mood} atmosphere | subtle surface texture | a clear focal point | depth and atmosphere in the background
quality: highly detailed | fine art | masterful brushwork | museum quality | sharp focus | intricate details
    | rich textures | professional artwork | balanced composition | high resolution | masterpiece
radical_core: {subject}, reimagined as {R} | {R} showing {subject} | {subject} transformed into {R}
    | {subject}, reinterpreted as {R} | {subject} recast as {R}
historical: an ancient Egyptian tomb fresco | a medieval illuminated manuscript page | a Byzantine gold-ground icon
    | a Roman floor mosaic | a Renaissance altarpiece | a Victorian steel engraving | a 1920s Art Deco travel poster
    | a Soviet constructivist poster | a 1950s pulp magazine cover | a prehistoric cave painting
    | a Baroque ceiling fresco | a 1970s psychedelic album cover
historical_detail: costumes and buildings of the period | the pigments and colours of the era
    | an aged surface with fine cracks | ornaments typical of the time | the conventions of the period's art
    | lettering and emblems of the era | the figures posed as the era would pose them
cultural: a Japanese ukiyo-e woodblock print | a Persian miniature | an Aboriginal dot painting
    | a Mexican muralist fresco | an Indian Madhubani painting | a Chinese ink-wash scroll
    | a West African kente-inspired textile | a Mughal court painting | an Inuit stonecut print
    | a Balinese temple painting | a Tibetan thangka | a Haitian naive painting
cultural_detail: the tradition's own patterns in the border | the tradition's own perspective and proportions
    | the materials that tradition uses | motifs from local folklore | the colours of that tradition
    | ornamental frames within the frame | the figures dressed as in that culture
natural: a living sculpture of moss, ferns and lichen | a mosaic of pressed flowers and autumn leaves
    | a relief grown from coral and seashells | a tapestry woven from vines and roots
    | a landscape sculpted in wind-blown sand | a pattern of tree rings, bark and fungi
    | an arrangement of pebbles and driftwood | a honeycomb built by bees | a garden in full bloom
natural_detail: dew drops catching the light | insects and birds living in the forms | roots spreading at the edges
    | organic textures everywhere | every line grown rather than drawn | petals and seeds as colour
    | the slow patterns of growth | the colours of earth, leaves and stone
surreal: a surreal dreamscape | a Magritte-like visual paradox | a melting Dali-like vision
    | an impossible Escher-like architecture | a dream where nothing obeys physics | a floating world in an endless sky
surreal_detail: clocks melting over the branches | fish swimming through the clouds
    | everything floating as gravity turns upside down | doors opening onto other skies
    | giant eyes watching from the horizon | staircases leading nowhere
    | figures casting the shadows of animals | the sea pouring out of a picture frame
    | trees growing upside down from the clouds
material: a stained-glass window with dark leaded outlines | a carved marble bas-relief | a knitted wool tapestry
    | a paper-cut shadow theatre | a cast bronze sculpture | a hand-painted porcelain plate
    | a mosaic of broken ceramic tiles | a clay stop-motion set | an embroidered silk panel
    | a neon sign on a brick wall | an origami paper diorama | a wood marquetry panel
material_detail: the texture of the new material in every part | craft marks left by the maker's hand
    | seams and joins left visible | light catching the surface of the material | forms simplified to suit the medium
    | a handmade, slightly irregular finish | precise craftsmanship in every detail
    | only the colours the material allows
emotional: an expressionist vision of {emotion} | a scene drowning in {emotion} | a feverish image of {emotion}
    | an image charged with {emotion}
emotion: overwhelming grief#sad | ecstatic joy#joy | quiet dread#sad | burning rage#fierce | tender nostalgia#calm
    | deep loneliness#sad | wild euphoria#joy | anxious suspense#fierce | serene bliss#calm
emotional_detail_calm: soft tear-blurred edges | light that feels like a memory | gentle fading colours
    | a hush over the whole scene | warm colours glowing quietly
emotional_detail_sad: storm-dark colours | heavy, sagging forms | an empty space pressing on the figures
    | cold colours draining the warmth | soft tear-blurred edges
emotional_detail_fierce: trembling, distorted contours | colours that seem to scream | violent slashing brushstrokes
    | jagged shapes | harsh clashing reds and blacks
emotional_detail_joy: colours bursting like fireworks | swirling, dancing brushstrokes
    | warm colours pulsing in the centre
    | figures that seem to float | light pouring from everywhere
mythological: a scene from Greek myth on Mount Olympus | a Norse saga with Valkyries and runes
    | an Egyptian myth under the eyes of Ra and Anubis | an episode of the Ramayana
    | a Celtic legend of fairies and standing stones | a Chinese dragon legend | an Arthurian quest for the Grail
    | a Slavic folk tale with the Firebird | the Mesopotamian epic of Gilgamesh
mythological_detail: the figures recast as gods and heroes | a sea serpent coiled in the distance
    | sacred symbols woven into the border | divine light breaking through the clouds
    | mythic creatures at the edges | a temple on the horizon | a golden aura around the main figure
scientific: an annotated anatomical study | a botanical plate with labelled specimens | an architectural blueprint
    | an exploded technical diagram | an astronomical star chart | an old cartographer's map
    | a cross-section diagram | a Leonardo notebook page with mirror-written notes | a natural history museum plate
scientific_detail: precise ink lines and measurement marks | numbered callouts and a legend
    | grid lines and scale bars | annotations in a neat hand | fine cross-hatched shading
    | arrows and dotted construction lines | a clean technical layout
technological: a neon cyberpunk cityscape with holograms | a retro 8-bit pixel-art game screen | a low-poly 3D render
    | a landscape of glowing circuit boards | a glitch-art image of corrupted data
    | a steampunk machine of brass gears and valves | a sci-fi matte painting aboard a space station
    | a vaporwave scene with chrome and palm trees | a wireframe hologram
technological_detail: scan lines and chromatic aberration | glowing cyan and magenta lights
    | cables and screens everywhere | robots in place of the figures | reflections on wet chrome
    | pixel-sharp edges | drifting lines of code in the air
scale: a miniature diorama on a tabletop | a microscopic world under a microscope
    | a colossal monument towering over a tiny city | a tiny world inside a snow globe | an aerial view from orbit
    | a macro photograph at insect scale | a dollhouse interior | a landscape painted on a grain of rice
scale_detail: tilt-shift blur at the edges | tiny people for scale | clouds drifting past the figures
    | enormous everyday objects | a shallow depth of field | a giant hand reaching into the frame
finish: rich layered colour | a strong contrast of light and shadow | crisp detail in the foreground
    | soft atmospheric perspective | dynamic diagonal lines | a harmonious colour balance | deep velvety darks
    | luminous whites | a sense of depth | delicate small details rewarding a close look
radical_context: the subject still recognisable | a bold new setting | far from the original medium
    | a {mood} atmosphere | an unexpected point of view | a striking new colour world
""")
MODERATE_CORE = {
    "colour": "{caption}, {recolour} {palette}",
    "lighting": "{caption}, {lit} {light}",
    "technique": "{caption}, {repaint} {technique}",
    "season": "{caption}, {set_in} {season}",
    "time_of_day": "{caption}, {seen_at} {time}",
}
EMOTION_MOODS = {"calm": "tender", "sad": "melancholic", "fierce": "tense", "joy": "joyful"}
_SLOT = re.compile(r"\{(\w+)\}")
_MEDIUM_PREFIX = re.compile(
    r"^(?:(?:a|an|the)\s+)?(?:[\w-]+\s+){0,2}?(?:painting|picture|image|photo|photograph|drawing|sketch|print|"
    r"artwork|illustration|portrait)\s+(?:of|with|showing|depicting)\s+",
    re.I,
)
_ARTIFACTS = re.compile(r"\b(?:arafed|araffe|arafly|araffed)\b\s*", re.I)


class Grammar:
    """Expands slots with one random generator, never reusing an alternative within a prompt."""

    def __init__(self, rng: random.Random, given: dict[str, str] | None = None, slots=SLOTS):
        self.rng, self.given, self.slots, self.used = rng, dict(given or {}), slots, set()
        self.tags: list[str] = []  # '#tag' endings of the alternatives picked so far

    def pick(self, name: str) -> str:
        options = [o for o in self.slots[name] if (name, o) not in self.used] or self.slots[name]
        choice = self.rng.choice(options)
        self.used.add((name, choice))
        text, _, tag = choice.partition("#")
        if tag:
            self.tags.append(tag)
        return text

    def detail_slot(self, family: str) -> str:
        """``<family>_detail_<tag>`` when a picked alternative was tagged (winter, dusk, ...) so
        that details agree with it, else ``<family>_detail``."""
        tagged = [f"{family}_detail_{t}" for t in self.tags if f"{family}_detail_{t}" in self.slots]
        return tagged[0] if tagged else f"{family}_detail"

    def expand(self, template: str) -> str:
        def sub(m: re.Match) -> str:
            name = m.group(1)
            return self.given[name] if name in self.given else self.expand(self.pick(name))

        return _SLOT.sub(sub, template)

    def some(self, name: str, k: int) -> list[str]:
        """``k`` different expansions of slot ``name``."""
        return [self.expand(self.pick(name)) for _ in range(min(k, len(self.slots[name])))]


def clean_caption(caption: str | None, max_words: int = 20) -> str:
    """A caption fit to build on: BLIP artifacts and repeated words gone, at most ``max_words``
    words (cut at a word boundary), no trailing punctuation; 'the painting' when empty."""
    text = _ARTIFACTS.sub("", caption if isinstance(caption, str) else "")  # None, NaN, NA: no caption
    text = re.sub(r"^\s*(?:there is|this is|it is)\s+", "", re.sub(r"\s+", " ", text).strip(), flags=re.I)
    kept: list[str] = []
    for word in text.split(" "):
        if word and (not kept or word.lower() != kept[-1].lower()):
            kept.append(word)
    text = " ".join(kept[:max_words]).strip(" ,.;:!?-")
    return text or "the painting"


def subject_of(caption: str) -> str:
    """The caption without its medium: 'an oil painting of a river' -> 'a river'."""
    rest = _MEDIUM_PREFIX.sub("", caption, count=1).strip()
    return rest or caption


def style_name(style: str | None) -> str:
    """A manifest style label as words: 'Art_Nouveau_Modern' -> 'Art Nouveau Modern'."""
    return re.sub(r"[_\s]+", " ", style if isinstance(style, str) else "").strip() or "original"


def template_prompt(
    caption: str, level: str, family: str, rng: random.Random, style: str | None = None
) -> list[Clause]:
    """The clauses of one prompt for an already cleaned ``caption`` (see :func:`clean_caption`)."""
    g = Grammar(
        rng,
        {
            "caption": caption,
            "subject": subject_of(caption),
            "style": style_name(style),
            "aspect": SLOTS.get(f"aspect_{family}", ["look"])[0],
        },
    )
    g.given["mood"] = g.pick("mood")  # one mood per prompt, wherever it is named
    if level == "moderate":
        if family not in MODERATE_CORE:
            raise ValueError(f"unknown moderate family {family!r} (known: {', '.join(MODERATE_CORE)})")
        clauses = [Clause(g.expand(MODERATE_CORE[family]), 0), Clause(g.expand(g.pick("keep")), 1)]
        clauses += [Clause(t, 2) for t in g.some(g.detail_slot(family), rng.randint(2, 4))]
        clauses += [Clause(t, 3) for t in g.some("context", rng.randint(1, 3))]
    elif level == "radical":
        if family not in RADICAL_FAMILIES:
            raise ValueError(f"unknown radical family {family!r} (known: {', '.join(RADICAL_FAMILIES)})")
        g.given["R"] = g.expand(g.pick(family))
        if family == "emotional":  # the context's mood must not contradict the emotion
            g.given["mood"] = EMOTION_MOODS[g.tags[-1]]
        details = g.some(g.detail_slot(family), rng.randint(2, 5))
        clauses = [Clause(g.expand(g.pick("radical_core")), 0), Clause(details[0], 1)]
        clauses += [Clause(t, 2) for t in details[1:]]
        clauses += [Clause(t, 3) for t in g.some("radical_context", rng.randint(1, 3))]
    else:
        raise ValueError(f"unknown level {level!r} (known: {', '.join(LEVELS)})")
    clauses += [Clause(t, 3) for t in g.some("finish", rng.randint(0, 2))]
    clauses += [Clause(t, 4) for t in g.some("quality", rng.randint(2, 5))]
    return clauses


_ARTICLE = re.compile(r"\b([Aa]n?) ([\w-]+)")
_AN_CONSONANT = ("hour", "honest", "honour", "heir")  # silent h: 'an'
_A_VOWEL = ("one", "once", "uni", "use", "usu", "euro", "ewe")  # a 'y'/'w' sound: 'a'


def fix_articles(text: str) -> str:
    """'a amber glow' -> 'an amber glow', 'an blue sky' -> 'a blue sky' (after slots were filled)."""

    def sub(m: re.Match) -> str:
        article, word = m.group(1), m.group(2)
        low = word.lower()
        vowel = (low[:1] in "aeiou8" and not low.startswith(_A_VOWEL)) or low.startswith(_AN_CONSONANT)
        want = "an" if vowel else "a"
        return f"{want if article.islower() else want.capitalize()} {word}"

    return _ARTICLE.sub(sub, text)


def render(clauses: list[Clause]) -> str:
    """Clauses as one prompt: comma-separated, in order, articles agreeing with their nouns."""
    return fix_articles(", ".join(c.text for c in clauses if c.text))
