"""Build the committed manifest of the SynthGRES photo world from Debian's tuxpaint-stamps-default.

    .venv/bin/python scripts/build_photo_manifest.py [--stamps DIR] [--out FILE] [--sheet sheet.png]

The manifest holds facts only (no image data): for every usable stamp its path relative to the stamps
root, the noun (singular head noun), its plural, taxonomy words, photographic or not, a colour word
or None, and its split ("train" or "testA").  The noun of each stamp is curated by hand below (the
captions mix species names, adjectives and whole sentences: "A red kangaroo.", "Eat your broccoli!");
the caption is stored next to it for review.  `--sheet` writes a contact sheet (PNG, not committed)
that was checked by eye; what it removed is listed in DROPPED with the reason.

Colour words come from the pixels: the dominant hue of the saturated visible pixels, kept only when
one hue clearly dominates (else None, and the grammar never names a colour for that stamp).
Split: for nouns with >= 2 stamps, one stamp (the last in sorted path order; two when the noun has
>= 5) is held out for testA ("does it recognise a *different* pig?").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train.data.synthgres.photo import DEFAULT_STAMPS_DIRS, MANIFEST_PATH, plural_of  # noqa: E402

# ------------------------------------------------------------------------------------------------
# Curation: photographs (path -> noun).  Merges are deliberate: "drake" -> duck, "ram"/"lamb" -> sheep,
# all reef fish -> fish, hen / rooster / chicken -> chicken, mandarin / Seville orange -> orange.
# ------------------------------------------------------------------------------------------------
PHOTOS: dict[str, str] = {
    # animals
    "animals/amphibians/frog-1.png": "frog", "animals/amphibians/frog.png": "frog",
    "animals/birds/adelaide-rosella.png": "parrot", "animals/birds/rainbow-lorikeet.png": "parrot",
    "animals/birds/blackbird.png": "blackbird", "animals/birds/chicken_profile.png": "chicken",
    "animals/birds/hen.png": "chicken", "animals/birds/rooster.png": "chicken",
    "animals/birds/crow.png": "crow", "animals/birds/crowned_crane.png": "crane",
    "animals/birds/cuckoo.png": "cuckoo", "animals/birds/drake.png": "duck", "animals/birds/duck.png": "duck",
    "animals/birds/gander.png": "goose", "animals/birds/guineafowl.png": "guinea fowl",
    "animals/birds/helmeted_guineafowl.png": "guinea fowl", "animals/birds/heron_greatblue.png": "heron",
    "animals/birds/heron_greatblue_flying.png": "heron", "animals/birds/lark.png": "lark",
    "animals/birds/little-penguin.png": "penguin", "animals/birds/magellanic_penguin.png": "penguin",
    "animals/birds/penguin.png": "penguin", "animals/birds/magpie.png": "magpie",
    "animals/birds/ostrich.png": "ostrich", "animals/birds/owl.png": "owl", "animals/birds/peacock.png": "peacock",
    "animals/birds/pelican.png": "pelican", "animals/birds/pigeon.png": "pigeon",
    "animals/birds/pink_flamingo.png": "flamingo", "animals/birds/seagull.png": "seagull",
    "animals/birds/silver-gull.png": "seagull", "animals/birds/tucan.png": "toucan",
    "animals/birds/turkey.png": "turkey", "animals/birds/vulture.png": "vulture",
    "animals/fish/bluegroper.png": "fish", "animals/fish/butterflyfish.png": "fish",
    "animals/fish/clownfish.png": "fish", "animals/fish/coraltrout.png": "fish",
    "animals/fish/dolphinfish.png": "fish", "animals/fish/lionfish.png": "fish",
    "animals/fish/moonwrasse.png": "fish", "animals/fish/stripedfish.png": "fish",
    "animals/fish/lobster.png": "lobster", "animals/fish/seahorse.png": "seahorse",
    "animals/fish/shrimp.png": "shrimp",
    "animals/insects/Brown_slug.png": "slug", "animals/insects/Woodlouse.png": "woodlouse",
    "animals/insects/bee.png": "bee", "animals/insects/fly.png": "fly", "animals/insects/hoverfly.png": "fly",
    "animals/insects/grasshopper.png": "grasshopper", "animals/insects/hornet.png": "hornet",
    "animals/insects/mantis.png": "mantis", "animals/insects/xanthia.png": "moth",
    "animals/lizards/iguana.png": "lizard",
    "animals/mammals/apes/chimp.png": "chimpanzee", "animals/mammals/apes/gorilla.png": "gorilla",
    "animals/mammals/apes/tamarin_emperor.png": "monkey",
    "animals/mammals/aquatic/dolphin.png": "dolphin", "animals/mammals/aquatic/orca.png": "orca",
    "animals/mammals/aquatic/otter.png": "otter", "animals/mammals/aquatic/sea_lion.png": "sea lion",
    "animals/mammals/aquatic/whale.png": "whale", "animals/mammals/badger.png": "badger",
    "animals/mammals/bears/bear.png": "bear", "animals/mammals/bears/european-bear.png": "bear",
    "animals/mammals/bovines/bison.png": "bison", "animals/mammals/bovines/bull.png": "bull",
    "animals/mammals/bovines/cow.png": "cow", "animals/mammals/bovines/cow_white.png": "cow",
    "animals/mammals/bovines/gnu-baby-stand.png": "gnu", "animals/mammals/bovines/gnu-baby.png": "gnu",
    "animals/mammals/bovines/gnu-sitting.png": "gnu", "animals/mammals/bovines/gnu-stand.png": "gnu",
    "animals/mammals/bovines/goat.png": "goat", "animals/mammals/bovines/mountaingoat.png": "goat",
    "animals/mammals/bovines/indian_blackbuck.png": "antelope", "animals/mammals/bovines/ram.png": "sheep",
    "animals/mammals/bovines/sheep.png": "sheep", "animals/mammals/bovines/sheep_lamb.png": "sheep",
    "animals/mammals/bovines/yak.png": "yak", "animals/mammals/bovines/zebu.png": "zebu",
    "animals/mammals/camel/camel.png": "camel", "animals/mammals/camel/dromedary.png": "camel",
    "animals/mammals/cats/lion-2.png": "lion", "animals/mammals/cats/lion.png": "lion",
    "animals/mammals/cats/tiger.png": "tiger", "animals/mammals/cats/tiger_sumatran.png": "tiger",
    "animals/mammals/deer/caribou.png": "reindeer", "animals/mammals/deer/deer.png": "deer",
    "animals/mammals/deer/doe.png": "deer", "animals/mammals/deer/wapiti.png": "deer",
    "animals/mammals/dogs/dingo.png": "dog", "animals/mammals/dogs/dog.png": "dog",
    "animals/mammals/dogs/fox.png": "fox", "animals/mammals/echidna.png": "echidna",
    "animals/mammals/elephant.png": "elephant", "animals/mammals/equines/donkey.png": "donkey",
    "animals/mammals/equines/donkey_eating.png": "donkey", "animals/mammals/equines/horse.png": "horse",
    "animals/mammals/equines/zebra.png": "zebra", "animals/mammals/ferret.png": "ferret",
    "animals/mammals/giraffe.png": "giraffe", "animals/mammals/hedgehog.png": "hedgehog",
    "animals/mammals/hippopotamus.png": "hippo", "animals/mammals/pig.png": "pig",
    "animals/mammals/pig_golden.png": "pig", "animals/mammals/pig_golden2.png": "pig",
    "animals/mammals/rabbit_little.png": "rabbit", "animals/mammals/rodents/rabbit-2.png": "rabbit",
    "animals/mammals/rodents/rabbit.png": "rabbit", "animals/mammals/rhino_black.png": "rhino",
    "animals/mammals/rodents/beaver.png": "beaver", "animals/mammals/rodents/capybara.png": "capybara",
    "animals/mammals/rodents/marmot.png": "marmot", "animals/mammals/rodents/mouse.png": "mouse",
    "animals/mammals/rodents/rat.png": "rat", "animals/mammals/rodents/squirrel.png": "squirrel",
    "animals/marsupials/kangaroo.png": "kangaroo", "animals/marsupials/koala.png": "koala",
    "animals/marsupials/wombat.png": "wombat", "animals/shellfish/murray-mussel.png": "mussel",
    "seasonal/easter/chick.png": "chick", "seasonal/halloween/blackcat.png": "cat",
    "seasonal/halloween/spider.png": "spider", "seasonal/halloween/bat_left.png": "bat",
    "seasonal/easter/butterfly.png": "butterfly", "seasonal/easter/bluebird.png": "bluebird",
    # food
    "food/fruit/Apricot_whole.png": "apricot", "food/fruit/apricot.png": "apricot",
    "food/fruit/Cherry_Stella.png": "cherries", "food/fruit/Strawberry2.png": "strawberry",
    "food/fruit/strawberry.png": "strawberry", "food/fruit/apple_fuji.png": "apple",
    "food/fruit/apple_granny_smith.png": "apple", "food/fruit/apple_green.png": "apple",
    "food/fruit/apple_red.png": "apple", "food/fruit/apple_sierra_beauty.png": "apple",
    "food/fruit/avocado.png": "avocado", "food/fruit/banana.png": "banana",
    "food/fruit/grapes.png": "grapes", "food/fruit/kiwi.png": "kiwi", "food/fruit/lemon.png": "lemon",
    "food/fruit/mandarine.png": "orange", "food/fruit/orange.png": "orange",
    "food/fruit/orange_seville.png": "orange", "food/fruit/mango.png": "mango", "food/fruit/pear.png": "pear",
    "food/fruit/pineapple.png": "pineapple", "food/fruit/pomegranate.png": "pomegranate",
    "food/fruit/raspberry.png": "raspberry", "food/fruit/sliced_lime.png": "lime",
    "food/nuts/almond.png": "almond", "food/nuts/pecan.png": "pecan", "food/nuts/walnut.png": "walnut",
    "food/nuts/walnut_shelled.png": "walnut", "food/pizza.png": "pizza",
    "food/vegetables/broccoli.png": "broccoli", "food/vegetables/carrot.png": "carrot",
    "food/vegetables/chilepepper.png": "chili", "food/vegetables/corn.png": "corn",
    "food/vegetables/eggplant.png": "eggplant", "food/vegetables/garlic.png": "garlic",
    "food/vegetables/lettuce.png": "lettuce", "food/vegetables/redlettuce.png": "lettuce",
    "food/vegetables/mushroom.png": "mushroom", "food/vegetables/onion.png": "onion",
    "food/vegetables/pattypan_squash.png": "squash", "food/vegetables/pepper.png": "pepper",
    "food/vegetables/yellowpepper.png": "pepper", "food/vegetables/potato.png": "potato",
    "food/vegetables/pumpkin_small.png": "pumpkin", "food/vegetables/tomato.png": "tomato",
    "seasonal/christmas/Christmas_pudding.png": "pudding", "seasonal/christmas/Mince_Pie.png": "pie",
    "seasonal/christmas/Candy_cane_photo_1.png": "candy cane",
    "seasonal/christmas/Candy_cane_photo_2.png": "candy cane",
    "seasonal/easter/wrapped_chocolate_easter_egg.png": "egg",
    "seasonal/easter/wrapped_chocolate_easter_egg_2.png": "egg",
    # plants
    "plants/flowers/adeenia.png": "flower", "plants/flowers/anemone_red.png": "flower",
    "plants/flowers/anthoorium.png": "flower", "plants/flowers/bolsom.png": "flower",
    "plants/flowers/chemparathi.png": "hibiscus", "plants/flowers/flower10.png": "hibiscus",
    "plants/flowers/daffodil.png": "daffodil", "seasonal/easter/daffodil.png": "daffodil",
    "plants/flowers/flower1.png": "flower", "plants/flowers/flower2.png": "flower",
    "plants/flowers/flower3.png": "flower", "plants/flowers/flower5.png": "flower",
    "plants/flowers/flower6.png": "flower", "plants/flowers/flower8.png": "flower",
    "plants/flowers/flower9.png": "flower", "plants/flowers/iris.png": "iris",
    "plants/flowers/marigold.png": "marigold", "plants/flowers/pigface.png": "flower",
    "plants/flowers/red-gazania.png": "flower", "plants/flowers/rose.png": "rose",
    "plants/flowers/whitestar-petunia.png": "flower", "plants/flowers/yellow-flower.png": "flower",
    "plants/mushrooms/cep-1.png": "mushroom", "plants/mushrooms/cep.png": "mushroom",
    "plants/trees/birch.png": "tree", "plants/trees/holm_oak.png": "tree", "plants/trees/liberia-palm.png": "palm tree",
    "plants/trees/tree336.png": "tree", "plants/trees/pinecone.png": "pine cone",
    "seasonal/christmas/Christmas_Tree_photo.png": "christmas tree",
    # household, hobbies, sports, medical
    "household/Lightbulb.png": "light bulb", "household/arttools/highlighter.png": "marker",
    "household/arttools/pen_dryerase.png": "marker", "household/arttools/scissors_small_closed.png": "scissors",
    "household/arttools/scissors_small_open.png": "scissors", "household/dishes/glass.png": "glass",
    "household/dishes/mug.png": "mug", "household/dishes/pitcher_small.png": "jug",
    "household/dishes/teapot.png": "teapot", "household/dishes/utensils/nutcracker.png": "nutcracker",
    "household/garbagecan.png": "bin", "household/wheelie_bin.png": "bin",
    "household/home_compost_bin.png": "bin", "household/kettle.png": "kettle", "household/key.png": "key",
    "household/rubberduck.png": "rubber duck", "household/toilet.png": "toilet",
    "household/tools/hammer.png": "hammer", "household/tools/mallet_metal.png": "hammer",
    "household/tools/measuring_tape.png": "tape measure", "household/tools/paintbrush_large.png": "paintbrush",
    "household/tools/plyers.png": "pliers", "household/tools/saw.png": "saw", "household/tools/spade.png": "spade",
    "household/tools/toolbox.png": "toolbox", "household/tools/wrench.png": "wrench",
    "household/tools/wrench_adjustable.png": "wrench", "household/tools/wrench_plumbers.png": "wrench",
    "hobbies/binoculars.png": "binoculars", "hobbies/camera_35mm.png": "camera",
    "hobbies/music/brass/trumpet.png": "trumpet", "hobbies/music/percussion/cymbal_crash.png": "cymbal",
    "hobbies/music/percussion/drum_tomtom_floor.png": "drum", "hobbies/music/string/cello.png": "cello",
    "hobbies/music/string/guitar2.png": "guitar", "hobbies/music/string/guitar_classical.png": "guitar",
    "hobbies/music/string/guitar_electric.png": "guitar", "hobbies/music/string/guitar_electric_bass.png": "guitar",
    "hobbies/music/string/violin.png": "violin", "hobbies/music/wind/bassoon.png": "bassoon",
    "medical/mercurythermometer.png": "thermometer", "medical/stethoscope.png": "stethoscope",
    "medical/syringe.png": "syringe", "medical/tooth.png": "tooth",
    "sports/australian_rules_football.png": "football", "sports/football.png": "football",
    "sports/basketball.png": "basketball", "sports/cricketball.png": "cricket ball",
    "sports/soccer.png": "soccer ball", "sports/tennis_ball.png": "tennis ball",
    "sports/tennis_racket.png": "tennis racket", "sports/trophy_cup.png": "trophy",
    "seasonal/candle.png": "candle", "seasonal/hanukkah/holiday_candle.png": "candle",
    "seasonal/christmas/stocking.png": "stocking", "seasonal/christmas/xmaswreath.png": "wreath",
    "seasonal/christmas/xmas_tp_bulb.png": "bauble", "seasonal/halloween/skull.png": "skull",
    # town, vehicles
    "town/uk_post_box.png": "post box", "town/usps_mailbox.png": "mailbox",
    "town/roadsigns/traffic_cone.png": "traffic cone",
    "vehicles/auto/beetle.png": "car", "vehicles/auto/sedan.png": "car", "vehicles/auto/sportscar2.png": "car",
    "vehicles/race/indycar.png": "car", "vehicles/auto/truck.png": "truck", "vehicles/garbagetruck.png": "truck",
    "vehicles/construction/dumper.png": "dumper", "vehicles/cycle/pink_tricycle.png": "tricycle",
    "vehicles/emergency/firetruck.png": "fire truck", "vehicles/flight/balloon360.png": "hot air balloon",
    "vehicles/flight/planes/747.png": "airplane", "vehicles/masstransit/green_korean_bus.png": "bus",
    "vehicles/ship/chineseJunk.png": "ship",
}

# Drawings (flat PNG cut-outs) of nouns that are clean single objects: photographic = False.
DRAWINGS: dict[str, str] = {
    "food/fruit/cartoon/apple.png": "apple", "food/fruit/cartoon/banana.png": "banana",
    "food/fruit/cartoon/lemon.png": "lemon", "food/fruit/cartoon/orange.png": "orange",
    "food/fruit/cartoon/pear.png": "pear", "food/fruit/cartoon/pineapple.png": "pineapple",
    "food/fruit/cartoon/strawberry.png": "strawberry", "food/fruit/cartoon/peach.png": "peach",
    "food/fruit/cartoon/cherries.png": "cherries", "food/fruit/cartoon/grapes.png": "grapes",
    "animals/insects/cartoon/butterfly.png": "butterfly", "animals/insects/cartoon/ladybug.png": "ladybug",
    "animals/insects/cartoon/snail.png": "snail", "animals/insects/cartoon/dragonfly.png": "dragonfly",
    "vehicles/emergency/cartoon/fire_engine.png": "fire truck",
    "vehicles/masstransit/cartoon/double_decker_bus.png": "bus",
    "vehicles/locomotive/cartoon/toy_train.png": "train",
    "household/dishes/cartoon/pasta_pot.png": "pot",
    # SVG drawings (rasterised with resvg-py): mostly everyday nouns that have no photograph
    "household/dishes/coffeecup.svg": "cup", "household/dishes/expresso.svg": "cup",
    "household/dishes/fork.svg": "fork", "household/dishes/cartoon/fork.svg": "fork",
    "household/dishes/spoon.svg": "spoon", "household/dishes/cartoon/spoon.svg": "spoon",
    "household/dishes/knife.svg": "knife", "household/dishes/bottle.svg": "bottle",
    "household/electronics/camera.svg": "camera", "household/electronics/digitalcamera.svg": "camera",
    "household/electronics/DSLR_Camera.svg": "camera", "household/electronics/mobile.svg": "phone",
    "household/electronics/phone.svg": "phone", "household/electronics/calculator.svg": "calculator",
    "household/electronics/laptop.svg": "laptop", "household/electronics/monitor.svg": "monitor",
    "household/microwave.svg": "microwave", "household/fridge.svg": "fridge",
    "household/Washing-machine.svg": "washing machine", "household/umbrella.svg": "umbrella",
    "household/arttools/Pencil.svg": "pencil", "household/arttools/pencil2.svg": "pencil",
    "household/arttools/ballpointpen.svg": "pen", "household/arttools/biro.svg": "pen",
    "household/clothes_iron.svg": "iron", "household/globe.svg": "globe", "household/trash_can.svg": "bin",
    "household/padlock_closed.svg": "padlock", "household/padlock_open.svg": "padlock",
    "household/vacuum_cleaner.svg": "vacuum cleaner", "household/tealight.svg": "candle",
    "household/tools/screwdriver.svg": "screwdriver", "household/tools/hammer2.svg": "hammer",
    "plants/toadstool.svg": "mushroom", "hobbies/kite.svg": "kite", "hobbies/music/string/violin2.svg": "violin",
    "hobbies/music/string/guitar_electric_bass2.svg": "guitar", "medical/digitalthermometer.svg": "thermometer",
    "seasonal/winter/sledge.svg": "sledge", "seasonal/winter/snowman.svg": "snowman",
    "seasonal/winter/snowman2.svg": "snowman", "seasonal/christmas/present.svg": "gift",
    "seasonal/christmas/candy_cane.svg": "candy cane", "seasonal/christmas/rudolf_reindeer.svg": "reindeer",
    "seasonal/balloon.svg": "balloon", "seasonal/leafrake.svg": "rake",
    "animals/insects/bee.svg": "bee", "animals/insects/cartoon/spider.svg": "spider",
    "animals/insects/cartoon/spider2.svg": "spider", "animals/insects/cartoon/ant.svg": "ant",
    "animals/insects/cartoon/monarchbutterfly.svg": "butterfly", "animals/mammals/equines/zebra2.svg": "zebra",
    "animals/mammals/cats/kitten.svg": "cat", "animals/mammals/cats/cheetah.svg": "cheetah",
    "animals/birds/swallow.svg": "swallow", "sports/stopwatch.svg": "stopwatch",
    "vehicles/iso_lorry1.svg": "truck", "vehicles/iso_lorry2.svg": "truck", "vehicles/iso_lorry3.svg": "truck",
    "vehicles/iso_lorry4.svg": "truck", "vehicles/toy_truck.svg": "truck", "vehicles/blue_truck.svg": "truck",
    "vehicles/iso_bus.svg": "bus", "vehicles/masstransit/cartoon/schoolbus.svg": "bus",
    "vehicles/race/f1_car.svg": "car", "vehicles/auto/sportscar.svg": "car", "vehicles/auto/sportscar3.svg": "car",
    "vehicles/construction/cartoon/forklift.svg": "forklift", "vehicles/construction/cartoon/forklift2.svg": "forklift",
    "vehicles/construction/cartoon/bulldozer.svg": "bulldozer", "vehicles/flight/planes/plane.svg": "airplane",
    "vehicles/ship/sail_boat1.svg": "sailboat", "vehicles/ship/sail_boat2.svg": "sailboat",
    "vehicles/locomotive/white_train.svg": "train", "vehicles/farming/cartoon/tractor.svg": "tractor",
    "vehicles/cycle/motorbike.svg": "motorbike", "vehicles/cycle/bluebike.svg": "bicycle",
    "vehicles/iso_fireengine.svg": "fire truck",
    "food/fruit/cartoon/blueberry.svg": "blueberries", "food/fruit/cartoon/watermelon.svg": "watermelon",
    "food/fruit/cartoon/raspberry.svg": "raspberry", "food/bread.svg": "bread", "food/loaf_of_bread.svg": "bread",
    "food/cheese.svg": "cheese", "food/dessert/smallcake.svg": "cupcake",
    "food/dessert/cartoon/birthday_cake.svg": "cake", "food/dessert/cartoon/pink_cake.svg": "cake",
}

# Taxonomy: path prefix -> group words (most specific prefix wins; all matching prefixes add words).
FOLDER_GROUPS: dict[str, tuple[str, ...]] = {
    "animals/": ("animal",), "animals/birds/": ("bird",), "animals/insects/": ("insect",),
    "food/": ("food",), "food/fruit/": ("fruit",), "food/vegetables/": ("vegetable",), "food/nuts/": ("nut",),
    "plants/": ("plant",), "plants/flowers/": ("flower",), "plants/trees/": ("tree",),
    "hobbies/music/": ("instrument",), "household/tools/": ("tool",), "vehicles/": ("vehicle",),
    "sports/": (), "household/dishes/": (),
}
# Per-noun taxonomy fixes (folder groups that would be wrong are removed, others added).
NOUN_GROUPS: dict[str, tuple[str, ...]] = {
    "fish": ("animal", "fish"), "lobster": ("animal",), "shrimp": ("animal",), "seahorse": ("animal", "fish"),
    "slug": ("animal",), "woodlouse": ("animal",), "spider": ("animal",), "bat": ("animal",),
    "cat": ("animal",), "chick": ("animal", "bird"), "bluebird": ("animal", "bird"),
    "butterfly": ("animal", "insect"), "ladybug": ("animal", "insect"), "dragonfly": ("animal", "insect"),
    "snail": ("animal",), "reindeer": ("animal", "deer"), "orca": ("animal", "whale"),
    "mushroom": ("food", "vegetable"), "pine cone": ("plant",), "christmas tree": ("plant", "tree"),
    "palm tree": ("plant", "tree"), "daffodil": ("plant", "flower"),
    "pudding": ("food",), "pie": ("food",), "candy cane": ("food",), "egg": ("food",),
    "football": ("ball",), "basketball": ("ball",), "cricket ball": ("ball",), "soccer ball": ("ball",),
    "tennis ball": ("ball",), "hammer": ("tool",), "spade": ("tool",), "scissors": ("tool",),
    "mug": ("dish",), "glass": ("dish",), "jug": ("dish",), "teapot": ("dish",), "pot": ("dish",),
    "kettle": ("dish",), "train": ("vehicle",), "fire truck": ("vehicle", "truck"),
    "chili": ("food", "vegetable", "pepper"), "rubber duck": ("toy",), "tricycle": ("vehicle",),
    "cup": ("dish",), "swallow": ("animal", "bird"), "ant": ("animal", "insect"), "cheetah": ("animal",),
    "zebra": ("animal",), "truck": ("vehicle", "truck"), "forklift": ("vehicle",), "bulldozer": ("vehicle",),
    "tractor": ("vehicle",), "sledge": (), "blueberries": ("fruit",), "watermelon": ("fruit",),
    "raspberry": ("fruit",), "bread": (), "cheese": (), "cupcake": (), "cake": (), "screwdriver": ("tool",),
    "rake": ("tool",), "candle": (), "gift": (), "balloon": (), "snowman": (), "violin": ("instrument",),
    "guitar": ("instrument",), "thermometer": (), "kite": (),
}
# Top-level groups used for evaluation breakdowns.
TOP_GROUPS: tuple[str, ...] = ("animals", "food", "plants", "household", "hobbies", "sports", "vehicles",
                               "other")
_TOP_OF_DIR = {"animals": "animals", "food": "food", "plants": "plants", "household": "household",
               "hobbies": "hobbies", "medical": "household", "sports": "sports", "vehicles": "vehicles",
               "town": "other", "seasonal": "other"}
_TOP_OF_NOUN = {"chick": "animals", "cat": "animals", "spider": "animals", "bat": "animals",
                "butterfly": "animals", "bluebird": "animals", "pudding": "food", "pie": "food",
                "candy cane": "food", "egg": "food", "daffodil": "plants", "christmas tree": "plants",
                "reindeer": "animals", "balloon": "hobbies", "kite": "hobbies", "sledge": "hobbies",
                "rake": "household", "gift": "other", "snowman": "other", "stopwatch": "sports"}

# Removed after looking at the contact sheet, or before (folder-level), with the reason.
DROPPED: dict[str, str] = {
    "animals/birds/albino_peahen.png": "white peahen: unclear noun next to 'peacock'",
    "animals/birds/nandou.png": "rhea: looks like an ostrich, obscure noun",
    "animals/birds/quetzal.png": "obscure noun",
    "animals/mammals/wildboar.png": "two animals in one stamp",
    "animals/shellfish/abalone.png": "obscure noun, shell only",
    "food/fruit/cherimoya.png": "obscure noun",
    "food/fruit/sliced_orange.png": "a slice, not an orange",
    "food/spices/ginger.png": "unclear caption ('ginger root')",
    "food/vegetables/yam.png": "looks like a potato",
    "food/vegetables/garlics.png": "a string of garlic: duplicate of garlic with several bulbs",
    "plants/flowers/flower4.png": "two flowers in one stamp",
    "plants/flowers/flower7.png": "several flowers in one stamp",
    "plants/flowers/appooppanthady.png": "milkweed seed head: unclear noun",
    "plants/mushrooms/cep-2.png": "caption unsure whether one or two mushrooms",
    "plants/lavender.png": "plant without a clean everyday noun",
    "plants/thyme.png": "plant without a clean everyday noun",
    "plants/lettuce_bolted.png": "bolted lettuce: does not look like 'lettuce'",
    "plants/eggplant.png": "a plant with fruit, clashes with the vegetable",
    "plants/trees/holly_leaves.png": "leaves, not an object",
    "plants/trees/rambutan.png": "caption 'an alien tree'",
    "plants/flowers/plastic/chuvanna_plastic_poo.png": "plastic flower",
    "seasonal/christmas/Roast_turkey.png": "clashes with the bird 'turkey'",
    "seasonal/easter/chick-hatched.png": "chick with egg shell: two objects",
    "seasonal/easter/chick-in-egg.png": "chick with egg shell: two objects",
    "household/cylinder.png": "gas cylinder: unclear shape and noun",
    "household/dishes/utensils/pepper_grinder.png": "clashes with the vegetable 'pepper'",
    "household/tools/cementmixer.png": "cement mixer: vehicle/tool ambiguity",
    "household/tools/toolbox.png": "kept out: contains tools",
    "hobbies/music/percussion/drumkit.png": "several drums in one stamp",
    "medical/bandage_adhesive.png": "flat, unclear at small size",
    "vehicles/7spoke256.png": "a wheel part",
    "vehicles/wheel_tractor.png": "a wheel part",
    "vehicles/ship/walnutBoat.png": "a toy made of a walnut",
    "vehicles/emergency/sedan_police.png": "emblems only",
    "town/monuments/inukshuk-photo.png": "obscure noun",
    "seasonal/christmas/lamp.png": "unclear noun",
    "seasonal/christmas/bow.png": "unclear at small size",
    "seasonal/christmas/tree.png": "drawing",
    "seasonal/halloween/jackolantern_mean.png": "carved face: clashes with 'pumpkin'",
    "seasonal/christmas/Santa.png": "a person",
    # seen on the contact sheet
    "animals/mammals/hedgehog.png": "a drawing, not a photograph",
    "animals/mammals/apes/tamarin_emperor.png": "unclear at scene scale (does not read as a monkey)",
    "food/nuts/walnut_shelled.png": "heavily pixelated",
    "food/pizza.png": "a drawing, not a photograph",
    "medical/tooth.png": "a drawing (outline), not a photograph",
    "household/dishes/glass.png": "transparent glass: nearly invisible on a background",
    "seasonal/christmas/xmas_tp_bulb.png": "pixelated",
    "seasonal/easter/bluebird.png": "a drawing", "seasonal/easter/chick.png": "a drawing",
    "seasonal/easter/butterfly.png": "a drawing", "seasonal/easter/daffodil.png": "a drawing",
    "seasonal/halloween/bat_left.png": "pixel-art drawing", "seasonal/halloween/blackcat.png": "pixel-art drawing",
    "seasonal/halloween/skull.png": "pixel-art drawing", "seasonal/halloween/spider.png": "pixel-art drawing",
    "seasonal/hanukkah/holiday_candle.png": "a drawing (glow), not a photograph",
    "animals/insects/bee.png": "a line drawing filed as a photograph; the SVG bee is kept as a drawing",
    "household/tealight.svg": "reads as a white cylinder, not a candle",
    "food/fruit/cartoon/watermelon.svg": "resvg cannot render it (invalid size)",
    "folders cartoon/, symbols/, space/, people/, military/, clothes/, town/houses/, town/roadsigns/ (signs), "
    "town/flags/ (flags), symbols/money (coins)": "drawings, symbols, signs, coins, people and clothing",
}

# Colour words the photo world uses; hue ranges in OpenCV degrees (0-180).
PHOTO_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink")
_HUE_BINS = (("red", 0, 8), ("orange", 8, 20), ("yellow", 20, 34), ("green", 34, 85), ("blue", 85, 130),
             ("purple", 130, 150), ("pink", 150, 170), ("red", 170, 181))


def _coloured_hues(rgba: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(OpenCV hues of the coloured visible pixels, their values, number of visible pixels)."""
    alpha = rgba[..., 3] >= 128
    hsv = cv2.cvtColor(np.ascontiguousarray(rgba[..., :3]), cv2.COLOR_RGB2HSV)[alpha]
    # Browns (wood, fur, nuts) are dark oranges/yellows: those hues need a bright value to count.
    warm = (hsv[:, 0] >= 8) & (hsv[:, 0] < 34)
    coloured = (hsv[:, 1] >= 115) & (hsv[:, 2] >= np.where(warm, 185, 100))
    return hsv[coloured, 0].astype(int), hsv[coloured, 2], int(alpha.sum())


def colour_shares(rgba: np.ndarray) -> dict[str, float]:
    """Fraction of the visible pixels that show each colour word (entries >= 0.05, 2 decimals).

    The grammar uses it to refuse colour phrases that a person could read otherwise: "the red
    apple" is only said when every other apple shows (almost) no red, and "the red horse" (no
    target) only when no horse shows red."""
    hue, _, n = _coloured_hues(rgba)
    out: dict[str, float] = defaultdict(float)
    for name, lo, hi in _HUE_BINS:
        out[name] += float(((hue >= lo) & (hue < hi)).sum()) / max(n, 1)
    return {k: round(v, 2) for k, v in sorted(out.items()) if v >= 0.05}


def colour_word(rgba: np.ndarray) -> str | None:
    """The colour word of a cut-out, or None when no hue clearly dominates.

    A pixel is coloured when its saturation >= 0.45 and value >= 0.35 (OpenCV HSV).  A word is given
    when >= 55 % of the visible pixels are coloured and >= 75 % of those fall in one hue bin (pink and
    purple need >= 85 %: they are the easiest to misread on photos).
    """
    hue, value, n = _coloured_hues(rgba)
    if n < 50 or len(hue) < 0.55 * n:
        return None
    counts: dict[str, int] = defaultdict(int)
    for name, lo, hi in _HUE_BINS:
        counts[name] += int(((hue >= lo) & (hue < hi)).sum())
    name, best = max(counts.items(), key=lambda kv: kv[1])
    if name in ("orange", "yellow") and np.median(value) < 200:
        return None
    need = 0.85 if name in ("pink", "purple") else 0.75
    return name if best >= need * len(hue) else None


# Colour words corrected by eye on the contact sheet (path -> word or None).
COLOUR_OVERRIDES: dict[str, str | None] = {
    "animals/fish/coraltrout.png": None, "animals/fish/moonwrasse.png": None,  # teal: blue or green?
    "animals/fish/stripedfish.png": None, "animals/insects/mantis.png": None,
    "food/fruit/apple_granny_smith.png": None, "plants/flowers/yellow-flower.png": "yellow",
    "animals/birds/hen.png": None, "food/fruit/cartoon/peach.png": None, "plants/flowers/flower5.png": None,
    "food/vegetables/yellowpepper.png": "yellow", "food/vegetables/pepper.png": "green",
    "vehicles/masstransit/green_korean_bus.png": "green",
}


def groups_for(path: str, noun: str) -> list[str]:
    """Taxonomy words of a stamp (never including its own noun)."""
    if noun in NOUN_GROUPS:
        words = list(NOUN_GROUPS[noun])
    else:
        words = []
        for prefix, ws in FOLDER_GROUPS.items():
            if path.startswith(prefix):
                words += [w for w in ws if w not in words]
    # "food" names the folder, but "all the foods" / "every food" are not natural: no group word.
    return [w for w in words if w != noun and w != "food"]


def top_group(path: str, noun: str) -> str:
    """Top-level taxonomy group (evaluation breakdowns)."""
    return _TOP_OF_NOUN.get(noun) or _TOP_OF_DIR.get(path.split("/", 1)[0], "other")


def caption(stamps: Path, rel: str) -> str:
    """First line of the stamp's caption file ('' when there is none)."""
    txt = (stamps / rel).with_suffix(".txt")  # NAME.png / NAME.svg -> NAME.txt
    if not txt.exists():
        return ""
    return txt.read_text(encoding="utf-8", errors="replace").splitlines()[0].strip()


def load_rgba(path: Path) -> np.ndarray:
    """(H, W, 4) uint8 RGBA of a stamp, exactly as the world reads it (PNG, or SVG via resvg-py)."""
    from train.data.synthgres.photo import read_rgba

    return read_rgba(path)


def build(stamps: Path) -> dict:
    """The manifest dict (see the module docstring)."""
    entries = []
    table = [(p, n, True) for p, n in PHOTOS.items()] + [(p, n, False) for p, n in DRAWINGS.items()]
    for rel, noun, photo in sorted(table):
        if rel in DROPPED:
            continue
        if not (stamps / rel).exists():
            print(f"missing: {rel}", file=sys.stderr)
            continue
        try:
            rgba = load_rgba(stamps / rel)
        except RuntimeError as exc:  # an SVG that resvg cannot render: listed, then moved to DROPPED
            print(f"unreadable: {rel}: {exc}", file=sys.stderr)
            continue
        entries.append({"path": rel, "noun": noun, "plural": plural_of(noun), "groups": groups_for(rel, noun),
                        "top": top_group(rel, noun), "photographic": photo, "colour": COLOUR_OVERRIDES.get(rel, colour_word(rgba))
                        if rel not in COLOUR_OVERRIDES else COLOUR_OVERRIDES[rel],
                        "colour_shares": colour_shares(rgba), "caption": caption(stamps, rel), "split": "train"})
    by_noun: dict[str, list[dict]] = defaultdict(list)
    for e in entries:
        if e["photographic"]:
            by_noun[e["noun"]].append(e)
    for noun, es in by_noun.items():
        if len(es) >= 2:
            for e in sorted(es, key=lambda e: e["path"])[-(2 if len(es) >= 5 else 1):]:
                e["split"] = "testA"
    return {"source": "tuxpaint-stamps-default", "version": 1, "colours": list(PHOTO_COLOURS),
            "top_groups": list(TOP_GROUPS), "stamps": entries}


def contact_sheet(stamps: Path, manifest: dict, out: str, cell: int = 112, cols: int = 16) -> None:
    """A grid of every manifest stamp on a checker background, labelled noun / colour / split."""
    es = manifest["stamps"]
    rows = (len(es) + cols - 1) // cols
    sheet = np.full((rows * (cell + 16), cols * cell, 3), 255, np.uint8)
    yy, xx = np.mgrid[:cell, :cell]
    checker = np.where(((yy // 8 + xx // 8) % 2)[..., None] == 0, 200, 235).astype(np.uint8).repeat(3, 2)
    for i, e in enumerate(es):
        rgba = load_rgba(stamps / e["path"])
        h, w = rgba.shape[:2]
        s = (cell - 4) / max(h, w)
        rgba = cv2.resize(rgba, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA)
        tile = checker.copy()
        oy, ox = (cell - rgba.shape[0]) // 2, (cell - rgba.shape[1]) // 2
        a = rgba[..., 3:4] / 255.0
        reg = tile[oy:oy + rgba.shape[0], ox:ox + rgba.shape[1]]
        tile[oy:oy + rgba.shape[0], ox:ox + rgba.shape[1]] = (a * rgba[..., :3] + (1 - a) * reg).astype(np.uint8)
        r, c = divmod(i, cols)
        y0, x0 = r * (cell + 16), c * cell
        sheet[y0:y0 + cell, x0:x0 + cell] = tile
        label = f"{i} {e['noun'][:9]} {(e['colour'] or '-')[:3]}{'' if e['photographic'] else ' D'}" \
                f"{' A' if e['split'] == 'testA' else ''}"
        cv2.putText(sheet, label, (x0 + 1, y0 + cell + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.32, (0, 0, 0), 1,
                    cv2.LINE_AA)
    cv2.imwrite(out, sheet[:, :, ::-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stamps", default=None, help="stamps root (default: the Debian install path)")
    ap.add_argument("--out", default=str(MANIFEST_PATH))
    ap.add_argument("--sheet", default=None, help="write a contact sheet PNG here (not committed)")
    args = ap.parse_args()
    stamps = Path(args.stamps) if args.stamps else next((Path(d) for d in DEFAULT_STAMPS_DIRS if Path(d).is_dir()), None)
    if stamps is None or not stamps.is_dir():
        print("tuxpaint stamps not found: sudo apt-get install tuxpaint-stamps-default", file=sys.stderr)
        return 1
    manifest = build(stamps)
    with open(args.out, "w") as f:  # one stamp per line: reviewable diffs
        head = {k: v for k, v in manifest.items() if k != "stamps"}
        f.write(json.dumps(head)[:-1] + ', "stamps": [\n')
        f.write(",\n".join(json.dumps(e, ensure_ascii=False) for e in manifest["stamps"]))
        f.write("\n]}\n")
    es = manifest["stamps"]
    nouns = {e["noun"] for e in es}
    print(f"{len(es)} stamps ({sum(e['photographic'] for e in es)} photographs), {len(nouns)} nouns, "
          f"{sum(e['split'] == 'testA' for e in es)} held out for testA, "
          f"{sum(e['colour'] is not None for e in es)} with a colour word -> {args.out}")
    if args.sheet:
        contact_sheet(stamps, manifest, args.sheet)
        print(f"contact sheet -> {args.sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
