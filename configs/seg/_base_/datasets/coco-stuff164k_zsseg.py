# COCO-Stuff 164K with ZSSeg's 156 seen / 15 unseen split (coco-stuff-164k-156), unseen
# pixels ignored in training. The class facts both stages read (num_seen, sample_per_class),
# the training split (stage (a) wraps it in ClassRecordDataset) and ZSSeg's stage-(b) loaders:
# short edge 320-960 px, 640-px crops, test short edge 640.
# Both stages list the classes of the 118k training annotations once: class_count_file
# (relative to the data root) caches the lists, written by rank 0 and read by the others.
_base_ = ['mmseg::_base_/datasets/coco-stuff164k.py', './zsseg_augmentation.py']
custom_imports = dict(imports=['pomp_seg'], allow_failed_imports=False)
dataset_type = 'ZeroShotCOCOStuffDataset'
num_seen = 156
sample_per_class = 32  # stage (a): ZSSeg's SAMPLE_PER_CLASS
class_count_file = 'annotations/train2017_label_values.json'
crop_size = (640, 640)
sizes = dict(RandomChoiceResize=dict(max_size=2560), RandomCrop=dict(crop_size=crop_size),
             ResizeShortestEdge=dict(scale=640, max_size=2560))
train_pipeline = [dict(t, **sizes.get(t['type'], {})) for t in _base_.zsseg_train_pipeline]
test_pipeline = [dict(t, **sizes.get(t['type'], {})) for t in _base_.zsseg_test_pipeline]
train_datasets = [dict(type=dataset_type, ignore_unseen=True, data_root=_base_.data_root,
                       data_prefix=dict(img_path='images/train2017', seg_map_path='annotations/train2017'))]
# drop_all_ignore: images whose labels are all unseen / unlabelled are left out, as ZSSeg's
# prepare_coco_stuff_164k_sem_seg.py writes no annotation for them
train_dataloader = dict(batch_size=4, dataset=dict(train_datasets[0], drop_all_ignore=True,
                                                   class_count_file=class_count_file, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(type=dataset_type, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='SeenUnseenIoUMetric')
test_evaluator = val_evaluator
